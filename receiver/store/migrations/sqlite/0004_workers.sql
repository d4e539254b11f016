-- Worker heartbeats: every process that runs handlers or polls keeps a row here, and
-- stamps the deliveries and polls it leases with its id, so a process that stopped
-- beating has its work taken over in seconds, not when its leases run out.
-- `pid_scope` names the PID namespace on this boot ("" when unknown): a pid proves a
-- process dead only to a process in the same scope on the same host.

CREATE TABLE workers (
    id           TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    pid_scope    TEXT NOT NULL DEFAULT '',
    timeout      REAL NOT NULL,  -- seconds its heartbeat may be late: its own setting
    started_at   REAL NOT NULL,
    heartbeat_at REAL NOT NULL
);

ALTER TABLE deliveries ADD COLUMN worker_id TEXT;
ALTER TABLE jobs ADD COLUMN poll_worker_id TEXT;
CREATE INDEX deliveries_worker ON deliveries (worker_id) WHERE state = 'running';
CREATE INDEX jobs_poll_worker ON jobs (poll_worker_id) WHERE poll_worker_id IS NOT NULL;
