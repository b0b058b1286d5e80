-- SQLite schema version 4 (conveyor.auth): the worker secrets granted to each token,
-- and console sessions ended by logout.
--
-- * auth_tokens.secrets: the names of worker secrets (CONVEYOR_SECRET_<NAME>) the
--   token's tasks may ask for, as a JSON list; existing tokens are granted none;
-- * auth_revoked_sessions: a logged-out session's id until its cookie would have
--   expired anyway.
--
-- The auth store of earlier versions may have added both already: the runner
-- (backends/sqlite/schema.py) counts adding a column that exists as done.

ALTER TABLE auth_tokens ADD COLUMN secrets TEXT NOT NULL DEFAULT '[]';

CREATE TABLE IF NOT EXISTS auth_revoked_sessions (id TEXT PRIMARY KEY, expires_at REAL NOT NULL);
