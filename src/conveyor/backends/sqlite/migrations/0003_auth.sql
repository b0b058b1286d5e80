-- SQLite schema version 3 (conveyor.auth): API tokens (hashes only), server secrets,
-- used enrollment nonces and the audit log.
--
-- ``IF NOT EXISTS``: before version 3 the auth store created these tables itself
-- when it was first opened, so a database of version 1 or 2 may have them already.

CREATE TABLE IF NOT EXISTS auth_tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    token_hash TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked_at REAL,
    created_by TEXT,
    worker_id TEXT
);
CREATE INDEX IF NOT EXISTS auth_tokens_worker ON auth_tokens (worker_id);

CREATE TABLE IF NOT EXISTS auth_secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL);

CREATE TABLE IF NOT EXISTS auth_nonces (nonce TEXT PRIMARY KEY, expires_at REAL NOT NULL);

CREATE TABLE IF NOT EXISTS audit_log (
    id TEXT PRIMARY KEY,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT,
    ip TEXT,
    ok INTEGER NOT NULL,
    detail TEXT
);
