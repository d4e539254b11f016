-- Integrations: local copies of a job's files (download handler) and a per-job notify URL.

ALTER TABLE jobs ADD COLUMN files TEXT NOT NULL DEFAULT '{}';
ALTER TABLE jobs ADD COLUMN notify_url TEXT;
