-- Dashboard sessions: a keyed digest of each session cookie (never the cookie) and its end.
-- Mirrors sqlite/0005_sessions.sql.

CREATE TABLE sessions (
    key TEXT PRIMARY KEY,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX sessions_expires_at ON sessions (expires_at);
