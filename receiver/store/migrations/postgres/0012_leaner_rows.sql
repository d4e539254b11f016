-- Leaner rows, second step (issue 14): every index earns its place by a query that uses
-- it, and no stored request is written twice. Mirrors sqlite/0012_leaner_rows.sql.

-- Claims (_CLAIM_DELIVERIES, next_delivery_at) read the unfinished deliveries through
-- deliveries_unfinished, partial on the same states; deliveries_open held the same rows
-- in another order that the claim's ORDER BY (a CASE of two times) cannot use, and
-- deliveries_due held every row, finished ones included (each state change added one
-- more entry per version). Both go.
DROP INDEX deliveries_open;
DROP INDEX deliveries_due;

-- Dead letters: list_deliveries(state=dead) and replay_deliveries. Done rows are listed
-- through their job (deliveries_event) or walked in full; nothing else asks by state.
CREATE INDEX deliveries_dead ON deliveries (seq) WHERE state = 'dead';

-- Our answer to each stored request (receiver.answers) gets a narrow table of its own. It
-- was written into the request row about a second after its insert; an UPDATE writes a
-- new version of the whole row (the body and headers too) and, as every page written in
-- that second is updated at once, none has room for a HOT update: each answer cost a
-- second copy of its request and an entry more in each of the table's indexes (about 590
-- bytes a callback in `receiver bench`; a fillfactor of 85 left it so). An answer row is
-- about 140 bytes with its index.
-- Used by: list_requests (LEFT JOIN by request id); a pruned request takes its answer
-- with it (ON DELETE CASCADE, through this primary key).
CREATE TABLE answers (
    request_id TEXT COLLATE "C" PRIMARY KEY REFERENCES requests (id) ON DELETE CASCADE,
    status     SMALLINT NOT NULL,
    ms         DOUBLE PRECISION
);
INSERT INTO answers (request_id, status, ms)
SELECT id, answer_status, answer_ms FROM requests WHERE answer_status IS NOT NULL;
ALTER TABLE requests DROP COLUMN answer_status, DROP COLUMN answer_ms;

-- A request's job is its event's: a callback's request row no longer repeats the job id
-- its event holds (30 characters, and an entry in requests_job). Only a request without
-- an event (a nudge, a callback for an unknown job) names its job itself. Used by:
-- list_requests (_JOB_REQUESTS: the job's own requests by requests_job, the others
-- through its events) and _PRUNABLE_JOBS' "no recent request of the job".
UPDATE requests SET job_id = NULL
WHERE job_id IS NOT NULL AND EXISTS (SELECT 1 FROM events e WHERE e.request_id = requests.id);
DROP INDEX requests_job;
CREATE INDEX requests_job ON requests (job_id) WHERE job_id IS NOT NULL;

-- Events by seq: no query looks an event up by it; list_events finds one job's events by
-- events_dedupe and sorts those few by seq. An event's key is its id (events_id_key),
-- which also names its rows to logical replication.
ALTER TABLE events DROP CONSTRAINT events_pkey;
ALTER TABLE events REPLICA IDENTITY USING INDEX events_id_key;

-- Idempotency keys: most jobs have none (a callback's new job, a job submitted without
-- one), and a unique index holds an entry for each NULL too. Used by: create_job's
-- ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL, which names the
-- predicate, and job_by_idempotency_key's idempotency_key = $1, which implies it.
DROP INDEX jobs_idempotency_key;
CREATE UNIQUE INDEX jobs_idempotency_key ON jobs (idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Every index after this migration and the queries it serves (postgres.py, pg_batch.py):
--   jobs_pkey                  every job by id; _LOCK_JOBS; the job list's cursor
--   jobs_token_hash_key        a callback on /hooks/{provider}/{token} (_LOCK_JOBS, job_by_token)
--   jobs_task_provider         a callback naming its task (_LOCK_JOBS, job_by_task), the
--                              job list by task
--   jobs_status                the job list by status, newest first; job_counts
--   jobs_provider              the job list by provider, newest first
--   jobs_next_poll             _CLAIM_POLLS, next_poll_at
--   jobs_poll_worker           _REAP: polls leased by a stopped worker
--   jobs_idempotency_key       create_job's ON CONFLICT, job_by_idempotency_key
--   jobs_spend_day             a budget's spend of the day (_SPENT, covering), spend()
--   jobs_waiting_slot          admit_creates (_ANY_WAITING_SLOT, _ADMIT)
--   jobs_open_by_provider      admit_creates' jobs in flight (_IN_FLIGHT)
--   jobs_ended                 `receiver prune --jobs` (_PRUNE_JOBS)
--   requests_pkey              an event's payload read from its body (EVENT_SELECT); the
--                              answers' foreign key check
--   answers_pkey               list_requests' answers; the cascade from a pruned request
--   requests_job               list_requests' requests without an event; _PRUNABLE_JOBS
--   requests_received          the requests' retention walk (_PRUNE_REQUESTS)
--   events_id_key              claims' events (e.id = ANY), deliveries' foreign key, pruning
--   events_dedupe              _FIND_DUPLICATES, _CHECK_DUPLICATE; a job's events (list_events,
--                              _JOB_REQUESTS)
--   events_request             _PRUNABLE_REQUESTS' "no event keeps it" and the request's job;
--                              the foreign key check
--   events_received            the events' retention walk (_PICK_EVENTS)
--   deliveries_pkey (seq)      claims (picked.seq)
--   deliveries_id_key          _SET_STATES, release, renew, replay by id
--   deliveries_unfinished      claims and next_delivery_at (every unfinished delivery); an
--                              earlier unfinished one of the job for the handler; _ENDED
--   deliveries_dead            dead letters
--   deliveries_event           a job's deliveries (_of_job); pruned events' deliveries
--   deliveries_worker          _REAP: deliveries leased by a stopped worker
--   quarantine_pkey, quarantine_received   the quarantine list, trim and retention walk
--   sessions_pkey, sessions_expires_at     session_alive, create_session's expiry sweep
