-- Retention (receiver.retention, Store.prune): indexes for the pruning queries, so each
-- batch walks only the rows past the retention instead of scanning whole tables.

-- The events walk: "events received before the cutoff, oldest first", per batch.
CREATE INDEX events_received ON events (received_at);
-- The requests walk: "requests received before the cutoff, oldest first", per batch.
CREATE INDEX requests_received ON requests (received_at);
-- The quarantine walk: "rows received before the cutoff, oldest first", per batch.
CREATE INDEX quarantine_received ON quarantine (received_at);
-- Deleting a batch of events deletes their deliveries first ("deliveries WHERE event_id
-- IN ..."), and the foreign key check on each deleted event looks here too.
CREATE INDEX deliveries_event ON deliveries (event_id);
-- A request goes only when no event refers to it ("NOT EXISTS ... WHERE request_id = ?"),
-- and the foreign key check on each deleted request looks here too.
CREATE INDEX events_request ON events (request_id);
-- `receiver prune --jobs`: "ended jobs last changed before the cutoff, oldest first".
CREATE INDEX jobs_ended ON jobs (updated_at) WHERE status IN ('succeeded', 'failed', 'cancelled');
