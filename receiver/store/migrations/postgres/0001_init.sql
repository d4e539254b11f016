-- The core loop: jobs, the raw requests and events that move them, handler deliveries,
-- and the quarantine of rejected requests. Mirrors sqlite/0001_init.sql: times are
-- epoch seconds in DOUBLE PRECISION, JSON columns are TEXT (as rows.py writes them),
-- ids sort bytewise (COLLATE "C") like SQLite's, so the job list's cursor agrees.

CREATE TABLE jobs (
    id            TEXT COLLATE "C" PRIMARY KEY,
    provider      TEXT NOT NULL,
    task_id       TEXT,
    token_hash    TEXT UNIQUE,
    secret_hash   TEXT,
    status        TEXT NOT NULL,
    raw_status    TEXT,
    progress      DOUBLE PRECISION,
    result_url    TEXT,
    preview_url   TEXT,
    preview_rank  DOUBLE PRECISION NOT NULL DEFAULT -1,  -- see receiver.state.preview_rank
    error         TEXT,
    error_code    TEXT,
    metadata      TEXT NOT NULL DEFAULT '{}',
    input         TEXT NOT NULL DEFAULT '{}',
    created_at    DOUBLE PRECISION NOT NULL,
    updated_at    DOUBLE PRECISION NOT NULL,
    next_poll_at  DOUBLE PRECISION,
    poll_attempts INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX jobs_provider_task ON jobs (provider, task_id) WHERE task_id IS NOT NULL;
CREATE INDEX jobs_status ON jobs (status, id);
CREATE INDEX jobs_provider ON jobs (provider, id);
CREATE INDEX jobs_task ON jobs (task_id);
CREATE INDEX jobs_next_poll ON jobs (next_poll_at) WHERE next_poll_at IS NOT NULL;

CREATE TABLE requests (
    id          TEXT COLLATE "C" PRIMARY KEY,
    job_id      TEXT,
    provider    TEXT NOT NULL,
    received_at DOUBLE PRECISION NOT NULL,
    method      TEXT NOT NULL,
    path        TEXT NOT NULL,
    query       TEXT NOT NULL,
    headers     TEXT NOT NULL,
    body        BYTEA NOT NULL,
    client      TEXT
);
CREATE INDEX requests_job ON requests (job_id);

CREATE TABLE events (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    job_id       TEXT NOT NULL REFERENCES jobs (id),
    provider     TEXT NOT NULL,
    task_id      TEXT,
    status       TEXT NOT NULL,
    raw_status   TEXT NOT NULL,
    progress     DOUBLE PRECISION,
    result_url   TEXT,
    preview_url  TEXT,
    error        TEXT,
    error_code   TEXT,
    source       TEXT NOT NULL,
    disposition  TEXT NOT NULL,
    dedupe_key   TEXT NOT NULL,
    received_at  DOUBLE PRECISION NOT NULL,
    request_id   TEXT REFERENCES requests (id),
    payload      TEXT
);
CREATE INDEX events_job ON events (job_id, seq);
CREATE INDEX events_dedupe ON events (job_id, dedupe_key);

CREATE TABLE deliveries (
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id              TEXT NOT NULL UNIQUE,
    event_id        TEXT NOT NULL REFERENCES events (id),
    job_id          TEXT NOT NULL,
    handler         TEXT NOT NULL,
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION NOT NULL,
    lease_until     DOUBLE PRECISION,
    last_error      TEXT,
    created_at      DOUBLE PRECISION NOT NULL,
    updated_at      DOUBLE PRECISION NOT NULL
);
CREATE INDEX deliveries_due ON deliveries (state, next_attempt_at);
CREATE INDEX deliveries_order ON deliveries (job_id, handler, seq);
-- Only unfinished deliveries are ever claimed: a small index that done rows leave.
CREATE INDEX deliveries_open ON deliveries (next_attempt_at, seq)
    WHERE state IN ('pending', 'running');

CREATE TABLE quarantine (
    id          TEXT COLLATE "C" PRIMARY KEY,
    received_at DOUBLE PRECISION NOT NULL,
    provider    TEXT NOT NULL,
    reason      TEXT NOT NULL,
    status_code INTEGER NOT NULL,
    method      TEXT NOT NULL,
    path        TEXT NOT NULL,
    query       TEXT NOT NULL,
    headers     TEXT NOT NULL,
    body        BYTEA NOT NULL,
    client      TEXT
);
