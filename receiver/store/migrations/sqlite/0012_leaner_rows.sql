-- Leaner rows, second step (issue 14): every index earns its place by a query that uses
-- it, a request row no longer repeats its event's job id, and our answer is not written
-- into it.
-- Finished deliveries (nearly all of them) leave the claim's index; dead ones get a small
-- index of their own for the dead-letter list and `receiver replay`.

-- Claims: due pending deliveries in order (_DUE_PENDING) and running ones whose lease
-- ran out (_LAPSED, next_delivery_at). Written with OR, not IN: SQLite uses a partial
-- index only when a term of the query (state = 'pending') is one of its OR's terms.
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries (state, next_attempt_at)
    WHERE state = 'pending' OR state = 'running';

-- Dead letters: list_deliveries(state=dead) and replay_deliveries, which name the state
-- as a literal so that this partial index applies. Done rows are listed through their
-- job (deliveries_event) or walked in full; nothing else asks for them by state.
CREATE INDEX deliveries_dead ON deliveries (seq) WHERE state = 'dead';

-- A request's job is its event's: a callback's request row no longer repeats the job id
-- its event holds (30 characters, and an entry in requests_job). Only a request without
-- an event (a nudge, a callback for an unknown job) names its job itself. Used by:
-- list_requests (_JOB_REQUESTS: the job's own requests by requests_job, the others
-- through its events) and _PRUNABLE_JOBS' "no recent request of the job".
UPDATE requests SET job_id = NULL
WHERE job_id IS NOT NULL AND EXISTS (SELECT 1 FROM events e WHERE e.request_id = requests.id);
DROP INDEX requests_job;
CREATE INDEX requests_job ON requests (job_id) WHERE job_id IS NOT NULL;

-- Our answer to each stored request (receiver.answers) gets a narrow table of its own,
-- keyed by the request's id (WITHOUT ROWID: the key is the table, no second index). It
-- was written into the request row about a second after its insert; a row that grows
-- on a full page splits it, and `receiver bench` found request pages 16% empty for it
-- (or 0.5%: it depends on how a row's size falls against the page). Used by:
-- list_requests (LEFT JOIN by request id); a pruned request takes its answer with it
-- (ON DELETE CASCADE, through this key).
CREATE TABLE answers (
    request_id TEXT PRIMARY KEY REFERENCES requests (id) ON DELETE CASCADE,
    status     INTEGER NOT NULL,
    ms         REAL
) WITHOUT ROWID;
INSERT INTO answers (request_id, status, ms)
SELECT id, answer_status, answer_ms FROM requests WHERE answer_status IS NOT NULL;
ALTER TABLE requests DROP COLUMN answer_status;
ALTER TABLE requests DROP COLUMN answer_ms;

-- Idempotency keys: most jobs have none (a callback's new job, a job submitted without
-- one), and a unique index holds an entry for each NULL too. Used by: create_job's
-- "key taken" (_KEY_TAKEN) and job_by_idempotency_key, both idempotency_key = ?, which
-- implies the predicate.
DROP INDEX jobs_idempotency_key;
CREATE UNIQUE INDEX jobs_idempotency_key ON jobs (idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Every index after this migration and the queries it serves (sqlite.py):
--   jobs (id)                  every job by id; the job list's cursor (id < ?, newest first)
--   jobs (token_hash)          a callback on /hooks/{provider}/{token} (_JOB_BY_TOKEN)
--   jobs_task_provider         a callback naming its task (job_by_task, _job_for_update);
--                              the job list by task (list_jobs task_id = ?)
--   jobs_status                the job list by status, newest first; job_counts
--   jobs_provider              the job list by provider, newest first
--   jobs_next_poll             claim_polls, next_poll_at
--   jobs_poll_worker           reap_workers: polls leased by a stopped worker
--   jobs_idempotency_key       create_job's "key taken", job_by_idempotency_key
--   jobs_spend_day             a budget's spend of the day (_SPENT, covering), spend()
--   jobs_waiting_slot          admit_creates' next waiting jobs (_NEXT_WAITING, _ANY_WAITING_SLOT)
--   jobs_open_by_provider      admit_creates' jobs in flight (_IN_FLIGHT)
--   jobs_ended                 `receiver prune --jobs` (_PRUNABLE_JOBS, INDEXED BY)
--   requests (id)              an event's payload read from its body (EVENT_SELECT); the
--                              answers' foreign key check
--   answers (request_id)       list_requests' answers; save_answers; a pruned request's cascade
--   requests_job               list_requests' requests without an event; _PRUNABLE_JOBS
--   requests_received          the requests' retention walk (_PRUNE_REQUESTS)
--   events (seq)               the rowid: a job's events in order (list_events)
--   events (id)                claims' events (e.id IN ...); deliveries' foreign key; pruning
--   events_dedupe              record's duplicate check; a job's events (list_events, _OF_JOB,
--                              _JOB_REQUESTS)
--   events_request             _PRUNABLE_REQUESTS' "no event keeps it" and the request's job;
--                              the foreign key check
--   events_received            the events' retention walk (_PICK_EVENTS)
--   deliveries (seq)           the rowid: claims by seq
--   deliveries (id)            set_delivery_state, release, renew, replay by id
--   deliveries_due             claims (_DUE_PENDING, _LAPSED), next_delivery_at
--   deliveries_dead            dead letters (list_deliveries, replay_deliveries)
--   deliveries_unfinished      an earlier unfinished delivery of the job for the handler
--                              (_DUE_PENDING, _UNFINISHED, _ENDED)
--   deliveries_event           a job's deliveries (_OF_JOB); deleting pruned events' deliveries
--   deliveries_worker          reap_workers: deliveries leased by a stopped worker
--   quarantine (id), quarantine_received   the quarantine list, trim and retention walk
--   sessions (key), sessions_expires_at    session_alive, create_session's expiry sweep
