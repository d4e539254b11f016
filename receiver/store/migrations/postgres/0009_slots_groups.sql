-- In-flight caps and provider groups (issue 16). A job past its provider's
-- RECEIVER_<PROVIDER>_MAX_RUNNING waits with create_state 'slot' (its fields in
-- create_request) and is admitted oldest first: jobs_waiting_slot finds the next ones,
-- jobs_open_by_provider counts the jobs a provider has in flight. provider_group names
-- the group ([groups] in receiver.toml) a job was submitted to; `provider` is the member
-- that took it.
-- Mirrors sqlite/0009_slots_groups.sql.

ALTER TABLE jobs ADD COLUMN provider_group TEXT;
CREATE INDEX jobs_waiting_slot ON jobs (provider, created_at, id) WHERE create_state = 'slot';
CREATE INDEX jobs_open_by_provider ON jobs (provider) WHERE status IN ('queued', 'running');
