-- Integrations: local copies of a job's files (download handler) and a per-job notify URL.
-- Mirrors sqlite/0002_integrations.sql; `files` is JSON in TEXT, as rows.py writes it.

ALTER TABLE jobs ADD COLUMN files TEXT NOT NULL DEFAULT '{}';
ALTER TABLE jobs ADD COLUMN notify_url TEXT;
