-- Dashboard sessions: a keyed digest of each session cookie (never the cookie) and its end.

CREATE TABLE sessions (
    key TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX sessions_expires_at ON sessions (expires_at);
