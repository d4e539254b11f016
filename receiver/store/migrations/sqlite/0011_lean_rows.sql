-- Leaner rows (issue 14): a callback's body is stored once, in its request row. An event
-- whose payload is that body, or one member of it (rixapi's "data"), keeps no copy:
-- `payload_from` says where it is ('' the whole body, else the member's name) and
-- `payload` is NULL (see receiver.store.rows.event_values and read_event, which reads the
-- body by the request's primary key). Other payloads (polls, reshaped ones) stay as they were.

ALTER TABLE events ADD COLUMN payload_from TEXT;

-- Existing rows move forward when the stored payload is, character for character, the
-- minified body (what the receiver wrote for a compact body) or its "data" member; any
-- other row keeps its copy, which reads the same.
UPDATE events SET payload_from = '', payload = NULL
WHERE payload IS NOT NULL AND request_id IS NOT NULL
  AND payload = (
    SELECT CASE WHEN json_valid(CAST(r.body AS TEXT)) THEN json(CAST(r.body AS TEXT)) END
    FROM requests r WHERE r.id = events.request_id
  );

UPDATE events SET payload_from = 'data', payload = NULL
WHERE payload IS NOT NULL AND request_id IS NOT NULL
  AND payload = (
    SELECT CASE WHEN json_valid(CAST(r.body AS TEXT))
      AND json_type(CAST(r.body AS TEXT), '$.data') = 'object'
      THEN json_extract(CAST(r.body AS TEXT), '$.data') END
    FROM requests r WHERE r.id = events.request_id
  );

-- The dedupe key each event stores (and events_dedupe holds beside its job id) becomes
-- its 11-character digest (receiver.state.dedupe_digest, registered on the connection
-- that migrates), about 70 bytes less per event. Used by: record's "has this job an
-- event with this key" (job_id, dedupe_key).
UPDATE events SET dedupe_key = receiver_dedupe_digest(dedupe_key);

-- Jobs by task: one unique index serves both lookups. Used by: a callback that names its
-- task (job_by_task, record with a new job: provider AND task_id) and the job list
-- filtered by task alone (list_jobs task_id = ?), which jobs_task served beside it.
DROP INDEX jobs_task;
DROP INDEX jobs_provider_task;
CREATE UNIQUE INDEX jobs_task_provider ON jobs (task_id, provider) WHERE task_id IS NOT NULL;

-- Deliveries by job and handler: only unfinished ones are ever asked for by job. Used
-- by: the claim's "an earlier delivery of this job for this handler is unfinished"
-- (_DUE_PENDING, next_delivery_at), record's _UNFINISHED and retention's "no delivery of
-- the job is unfinished", all with state IN ('pending', 'running'). Done and dead rows
-- (nearly all of them) leave it; a job's deliveries are listed and replayed through its
-- events (events_dedupe by job_id, then deliveries_event).
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
