-- Fewer indexes (issue 14, third step): the retention and spend() walk ids instead of
-- times, and partial indexes leave out what most rows are: succeeded jobs, unpriced jobs and,
-- on PostgreSQL, jobs without a callback token. Mirrors sqlite/0014_fewer_indexes.sql.

-- Retention: events and requests are walked by id, not received_at (_PICK_EVENTS,
-- _PRUNE_REQUESTS and their counts). An id begins with the millisecond it was minted
-- (models.new_id, ULID layout), so the ids below the first one minted at the cutoff
-- (rows.prune_values) are a range of the id's own unique index that holds every row
-- received before the cutoff; `received_at < cutoff` still decides within it. A request's
-- id is minted before its received_at is stamped, an event's at its received_at
-- (state.event_of): a row minted after its received_at would only be kept longer.
DROP INDEX events_received;
DROP INDEX requests_received;

-- The job list by status: most jobs end succeeded, which a walk of the job list's own
-- order (by id, newest first) finds densely; the rare statuses (queued, running, failed,
-- cancelled) keep an index, partial on the term the list query and job_counts repeat
-- (rows.NOT_SUCCEEDED): a prepared statement's $1 proves nothing about the predicate.
DROP INDEX jobs_status;
CREATE INDEX jobs_status ON jobs (status, id) WHERE status <> 'succeeded';

-- Spend: a budget's sum of the day (_SPENT) adds only jobs that have a cost or an estimate,
-- and repeats this index's predicate (rows.PRICED) to use it; jobs of an unpriced provider
-- (every job `receiver bench` makes) stay out of it. spend() counts every job, priced or
-- not: it walks jobs by id from the first id of its `since` (rows.spend_bound), as a job's
-- id is minted after its created_at is stamped (submit.queued_job).
DROP INDEX jobs_spend_day;
CREATE INDEX jobs_spend_day ON jobs (created_at, cost, estimated_cost)
    WHERE COALESCE(cost, estimated_cost) IS NOT NULL;

-- Callback tokens: only jobs we submitted have one, and the unique constraint's index held
-- an entry for each NULL too (a callback's new job: 12 bytes a callback in `receiver
-- bench`). Used by: job_by_token (token_hash = $1) and _LOCK_JOBS (token_hash = ANY($2)),
-- which imply the predicate for any parameter: `=` is strict, and NULL matches nothing.
-- SQLite keeps its column constraint, which only a rebuild of the table could drop.
ALTER TABLE jobs DROP CONSTRAINT jobs_token_hash_key;
CREATE UNIQUE INDEX jobs_token_hash ON jobs (token_hash) WHERE token_hash IS NOT NULL;

-- Every index after this migration and the queries it serves (postgres.py, pg_batch.py):
--   jobs_pkey                  every job by id; _LOCK_JOBS; the job list's cursor; the job
--                              list of succeeded jobs (walked newest first); spend()
--   jobs_token_hash            a callback on /hooks/{provider}/{token} (_LOCK_JOBS, job_by_token)
--   jobs_task_provider         a callback naming its task (_LOCK_JOBS, job_by_task), the
--                              job list by task
--   jobs_status                the job list by any other status, newest first; job_counts
--                              of the other statuses (both with status <> 'succeeded')
--   jobs_provider              the job list by provider, newest first
--   jobs_next_poll             _CLAIM_POLLS, next_poll_at
--   jobs_poll_worker           _REAP: polls leased by a stopped worker
--   jobs_idempotency_key       create_job's ON CONFLICT, job_by_idempotency_key
--   jobs_spend_day             a budget's spend of the day (_SPENT, covering)
--   jobs_waiting_slot          admit_creates (_ANY_WAITING_SLOT, _ADMIT)
--   jobs_open_by_provider      admit_creates' jobs in flight (_IN_FLIGHT)
--   jobs_ended                 `receiver prune --jobs` (_PRUNE_JOBS)
--   requests_pkey              an event's payload read from its body (EVENT_SELECT); the
--                              answers' foreign key check; the requests' retention walk
--                              (_PRUNE_REQUESTS, by id)
--   answers_pkey               list_requests' answers; the cascade from a pruned request
--   requests_job               list_requests' requests without an event; _PRUNABLE_JOBS
--   events_id_key              claims' events (e.id = ANY), deliveries' foreign key, pruning;
--                              the events' retention walk (_PICK_EVENTS, by id)
--   events_dedupe              _FIND_DUPLICATES, _CHECK_DUPLICATE; a job's events (list_events,
--                              _JOB_REQUESTS)
--   events_request             _PRUNABLE_REQUESTS' "no event keeps it" and the request's job;
--                              the foreign key check
--   deliveries_pkey (seq)      claims (picked.seq)
--   deliveries_id_key          _SET_STATES, release, renew, replay by id
--   deliveries_unfinished      claims and next_delivery_at (every unfinished delivery); an
--                              earlier unfinished one of the job for the handler; _ENDED
--   deliveries_dead            dead letters
--   deliveries_event           a job's deliveries (_of_job); pruned events' deliveries
--   deliveries_worker          _REAP: deliveries leased by a stopped worker
--   quarantine_pkey, quarantine_received   the quarantine list, trim and retention walk
--   sessions_pkey, sessions_expires_at     session_alive, create_session's expiry sweep
