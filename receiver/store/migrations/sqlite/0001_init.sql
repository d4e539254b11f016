-- The core loop: jobs, the raw requests and events that move them, handler deliveries,
-- and the quarantine of rejected requests.

CREATE TABLE jobs (
    id            TEXT PRIMARY KEY,
    provider      TEXT NOT NULL,
    task_id       TEXT,
    token_hash    TEXT UNIQUE,
    secret_hash   TEXT,
    status        TEXT NOT NULL,
    raw_status    TEXT,
    progress      REAL,
    result_url    TEXT,
    preview_url   TEXT,
    preview_rank  REAL NOT NULL DEFAULT -1,  -- see receiver.state.preview_rank
    error         TEXT,
    error_code    TEXT,
    metadata      TEXT NOT NULL DEFAULT '{}',
    input         TEXT NOT NULL DEFAULT '{}',
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL,
    next_poll_at  REAL,
    poll_attempts INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX jobs_provider_task ON jobs (provider, task_id) WHERE task_id IS NOT NULL;
CREATE INDEX jobs_status ON jobs (status, id);
CREATE INDEX jobs_provider ON jobs (provider, id);
CREATE INDEX jobs_task ON jobs (task_id);
CREATE INDEX jobs_next_poll ON jobs (next_poll_at) WHERE next_poll_at IS NOT NULL;

CREATE TABLE requests (
    id          TEXT PRIMARY KEY,
    job_id      TEXT,
    provider    TEXT NOT NULL,
    received_at REAL NOT NULL,
    method      TEXT NOT NULL,
    path        TEXT NOT NULL,
    query       TEXT NOT NULL,
    headers     TEXT NOT NULL,
    body        BLOB NOT NULL,
    client      TEXT
);
CREATE INDEX requests_job ON requests (job_id);

CREATE TABLE events (
    seq          INTEGER PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    job_id       TEXT NOT NULL REFERENCES jobs (id),
    provider     TEXT NOT NULL,
    task_id      TEXT,
    status       TEXT NOT NULL,
    raw_status   TEXT NOT NULL,
    progress     REAL,
    result_url   TEXT,
    preview_url  TEXT,
    error        TEXT,
    error_code   TEXT,
    source       TEXT NOT NULL,
    disposition  TEXT NOT NULL,
    dedupe_key   TEXT NOT NULL,
    received_at  REAL NOT NULL,
    request_id   TEXT REFERENCES requests (id),
    payload      TEXT
);
CREATE INDEX events_job ON events (job_id, seq);
CREATE INDEX events_dedupe ON events (job_id, dedupe_key);

CREATE TABLE deliveries (
    seq             INTEGER PRIMARY KEY,
    id              TEXT NOT NULL UNIQUE,
    event_id        TEXT NOT NULL REFERENCES events (id),
    job_id          TEXT NOT NULL,
    handler         TEXT NOT NULL,
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    lease_until     REAL,
    last_error      TEXT,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL
);
CREATE INDEX deliveries_due ON deliveries (state, next_attempt_at);
CREATE INDEX deliveries_order ON deliveries (job_id, handler, seq);

CREATE TABLE quarantine (
    id          TEXT PRIMARY KEY,
    received_at REAL NOT NULL,
    provider    TEXT NOT NULL,
    reason      TEXT NOT NULL,
    status_code INTEGER NOT NULL,
    method      TEXT NOT NULL,
    path        TEXT NOT NULL,
    query       TEXT NOT NULL,
    headers     TEXT NOT NULL,
    body        BLOB NOT NULL,
    client      TEXT
);
