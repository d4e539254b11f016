-- Fewer indexes (issue 14, third step): the retention and spend() walk ids instead of
-- times, and partial indexes leave out what most rows are: succeeded jobs, unpriced jobs.

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
-- (rows.NOT_SUCCEEDED): SQLite uses a partial index only for a query that has its term.
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

-- Every index after this migration and the queries it serves (sqlite.py):
--   jobs (id)                  every job by id; the job list's cursor (id < ?, newest first);
--                              the job list of succeeded jobs (walked newest first); spend()
--   jobs (token_hash)          a callback on /hooks/{provider}/{token} (_JOB_BY_TOKEN)
--   jobs_task_provider         a callback naming its task (job_by_task, _job_for_update);
--                              the job list by task (list_jobs task_id = ?)
--   jobs_status                the job list by any other status, newest first; job_counts
--                              of the other statuses (both with status <> 'succeeded')
--   jobs_provider              the job list by provider, newest first
--   jobs_next_poll             claim_polls, next_poll_at
--   jobs_poll_worker           reap_workers: polls leased by a stopped worker
--   jobs_idempotency_key       create_job's "key taken", job_by_idempotency_key
--   jobs_spend_day             a budget's spend of the day (_SPENT, covering)
--   jobs_waiting_slot          admit_creates' next waiting jobs (_NEXT_WAITING, _ANY_WAITING_SLOT)
--   jobs_open_by_provider      admit_creates' jobs in flight (_IN_FLIGHT)
--   jobs_ended                 `receiver prune --jobs` (_PRUNABLE_JOBS, INDEXED BY)
--   requests (id)              an event's payload read from its body (EVENT_SELECT); the
--                              answers' foreign key check; the requests' retention walk
--                              (_PRUNE_REQUESTS, by id)
--   answers (request_id)       list_requests' answers; save_answers; a pruned request's cascade
--   requests_job               list_requests' requests without an event; _PRUNABLE_JOBS
--   events (seq)               the rowid: a job's events in order (list_events)
--   events (id)                claims' events (e.id IN ...); deliveries' foreign key; pruning;
--                              the events' retention walk (_PICK_EVENTS, by id)
--   events_dedupe              record's duplicate check; a job's events (list_events, _OF_JOB,
--                              _JOB_REQUESTS)
--   events_request             _PRUNABLE_REQUESTS' "no event keeps it" and the request's job;
--                              the foreign key check
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
