-- Never pay twice (issue 16): a submission's idempotency key and the digest of the request
-- it came with, one job per key (UNIQUE, so concurrent requests with one key make one job);
-- and what is known of the create call: NULL when it answered, 'uncertain' when its outcome
-- is unknown (a timeout, a dropped connection, 502/503/504), 'waiting' while a create the
-- provider asked us to repeat later (429, 503 with Retry-After) waits for `next_poll_at`,
-- with the fields to send again, as given (credentials included: `input` is redacted), in
-- `create_request`, cleared as the retry starts.

ALTER TABLE jobs ADD COLUMN idempotency_key TEXT;
ALTER TABLE jobs ADD COLUMN request_hash TEXT;
ALTER TABLE jobs ADD COLUMN create_state TEXT;
ALTER TABLE jobs ADD COLUMN create_request TEXT;
CREATE UNIQUE INDEX jobs_idempotency_key ON jobs (idempotency_key);
