-- Every id column compares bytewise (COLLATE "C"), as the primary keys they name always
-- did (0001). A column of the database's default collation compared with a "C" one gets
-- no index: the comparison's collation is the column's on one side and the key's on the
-- other, so an index on either side may not apply. `events e WHERE e.job_id = j.id` (the
-- retention of ended jobs) read every entry of events_dedupe for each job, and a
-- request's events (retention of requests) were found only by naming a collation in the
-- query. With one collation for every id, each such join walks its index.
-- The columns keep their values; PostgreSQL rebuilds the indexes that hold them.
ALTER TABLE events
    ALTER COLUMN id TYPE TEXT COLLATE "C",
    ALTER COLUMN job_id TYPE TEXT COLLATE "C",
    ALTER COLUMN request_id TYPE TEXT COLLATE "C";
ALTER TABLE deliveries
    ALTER COLUMN id TYPE TEXT COLLATE "C",
    ALTER COLUMN event_id TYPE TEXT COLLATE "C",
    ALTER COLUMN job_id TYPE TEXT COLLATE "C",
    ALTER COLUMN worker_id TYPE TEXT COLLATE "C";
ALTER TABLE requests ALTER COLUMN job_id TYPE TEXT COLLATE "C";
ALTER TABLE jobs ALTER COLUMN poll_worker_id TYPE TEXT COLLATE "C";
