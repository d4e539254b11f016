-- Leaner rows (issue 14): a callback's body is stored once, in its request row. An event
-- whose payload is that body, or one member of it (rixapi's "data"), keeps no copy:
-- `payload_from` says where it is ('' the whole body, else the member's name) and
-- `payload` is NULL (see receiver.store.rows.event_values and read_event, which reads the
-- body by the request's primary key). Mirrors sqlite/0011_lean_rows.sql.

ALTER TABLE events ADD COLUMN payload_from TEXT;

-- Existing rows move forward when the stored payload equals the body, or its "data"
-- member, as JSON; a body that is not UTF-8 JSON PostgreSQL can read keeps its copy.
CREATE FUNCTION pg_temp.lean_payload_from(payload TEXT, body BYTEA) RETURNS TEXT
LANGUAGE plpgsql AS $$
DECLARE
    kept JSONB;
    whole JSONB;
BEGIN
    kept := payload::jsonb;
    whole := convert_from(body, 'UTF8')::jsonb;
    IF whole = kept THEN
        RETURN '';
    END IF;
    IF jsonb_typeof(whole) = 'object' AND whole -> 'data' = kept THEN
        RETURN 'data';
    END IF;
    RETURN NULL;
EXCEPTION WHEN others THEN
    RETURN NULL;
END
$$;

UPDATE events e SET payload_from = moved.payload_from, payload = NULL
FROM (
    SELECT k.seq, pg_temp.lean_payload_from(k.payload, r.body) AS payload_from
    FROM events k JOIN requests r ON r.id = k.request_id
    WHERE k.payload IS NOT NULL
) moved
WHERE e.seq = moved.seq AND moved.payload_from IS NOT NULL;

DROP FUNCTION pg_temp.lean_payload_from(TEXT, BYTEA);

-- The dedupe key each event stores (and events_dedupe holds beside its job id) becomes
-- its 11-character digest, as receiver.state.dedupe_digest makes it: the unpadded base64
-- of the first 8 bytes of its SHA-256. Used by: record's "has this job an event with
-- this key" (job_id, dedupe_key).
UPDATE events
SET dedupe_key = rtrim(encode(substr(sha256(convert_to(dedupe_key, 'UTF8')), 1, 8), 'base64'), '=');

-- Jobs by task: one unique index serves both lookups. Used by: a callback that names its
-- task (job_by_task, record's ON CONFLICT (provider, task_id): columns in any order) and
-- the job list filtered by task alone (list_jobs task_id = $n), which jobs_task served.
DROP INDEX jobs_task;
DROP INDEX jobs_provider_task;
CREATE UNIQUE INDEX jobs_task_provider ON jobs (task_id, provider) WHERE task_id IS NOT NULL;

-- Deliveries by job and handler: only unfinished ones are ever asked for by job. Used
-- by: the claim's "an earlier delivery of this job for this handler is unfinished"
-- (_CLAIM_DELIVERIES, next_delivery_at) and retention's "no delivery of the job is
-- unfinished", all with state IN ('pending', 'running'). Done and dead rows leave it; a
-- job's deliveries are listed and replayed through its events (events_dedupe by job_id,
-- then deliveries_event).
DROP INDEX deliveries_order;
CREATE INDEX deliveries_unfinished ON deliveries (job_id, handler, seq)
    WHERE state IN ('pending', 'running');

-- A job's events: events_dedupe (job_id, dedupe_key) already finds them by job (the job's
-- event list, the retention's checks, the foreign key check when a job is deleted); the
-- event list sorts one job's events by seq instead of keeping a second index per event.
DROP INDEX events_job;

-- A delivery's worker stamp matters only while it runs (reaping a stopped worker's
-- leases, deliveries_worker WHERE state = 'running'): finished rows drop theirs.
UPDATE deliveries SET worker_id = NULL WHERE state <> 'running' AND worker_id IS NOT NULL;

-- Kept: jobs_provider (provider, id), the job list filtered by provider (the dashboard,
-- GET /jobs?provider=, `receiver jobs --provider`), newest first; without it a provider
-- with few jobs would walk every job. One entry per job, not per callback.
