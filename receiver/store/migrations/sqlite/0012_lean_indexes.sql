-- Leaner rows, second step (issue 14): every index earns its place by a query that uses it.
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
--   requests (id)              an event's payload read from its body (EVENT_SELECT); save_answers
--   requests_job               list_requests; _PRUNABLE_JOBS' "no recent request"
--   requests_received          the requests' retention walk (_PRUNE_REQUESTS)
--   events (seq)               the rowid: a job's events in order (list_events)
--   events (id)                claims' events (e.id IN ...); deliveries' foreign key; pruning
--   events_dedupe              record's duplicate check; a job's events (list_events, _OF_JOB)
--   events_request             _PRUNABLE_REQUESTS' "no event keeps it"; the foreign key check
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
