-- Due deliveries walked in due order (issue 14, PostgreSQL only: SQLite removes an index
-- entry as its row changes, and its deliveries_due already serves the same queries).
--
-- Every delivery passes through `running` (most are claimed as they are recorded), and a
-- row that leaves a partial index's predicate leaves its entry behind, dead, until VACUUM.
-- The dispatcher asked for the earliest due delivery through deliveries_unfinished with a
-- bitmap scan, which visits the table for every entry, dead or not, on every call: under
-- `receiver bench` next_delivery_at read every delivery finished since the last vacuum,
-- 109 ms a call on average: 120 s of the database's 147 s of CPU over one bench.
-- An index scan in order stops at the first row it needs, and marks the dead entries it
-- passes so that the next scan skips them without reading the table.
CREATE INDEX deliveries_pending ON deliveries (next_attempt_at, seq) WHERE state = 'pending';
CREATE INDEX deliveries_leased ON deliveries (lease_until, seq) WHERE state = 'running';

-- _REAP_WORKERS reads the running deliveries: deliveries_leased holds the rows
-- deliveries_worker did, under a shorter key than a worker id.
DROP INDEX deliveries_worker;

-- Every index of deliveries, and what uses it:
--   deliveries_pkey (seq)      claims (picked.seq)
--   deliveries_id_key          _SET_STATES, release, renew, replay by id
--   deliveries_pending         claims and next_delivery_at: pending deliveries by due time
--   deliveries_leased          claims and next_delivery_at: leases by expiry; _REAP_WORKERS
--   deliveries_unfinished      an earlier unfinished one of the job for the handler
--                              (_nothing_before, the batch's _LOOK_UP); _ENDED
--   deliveries_dead            dead letters
--   deliveries_event           a job's deliveries (_of_job); pruned events' deliveries
