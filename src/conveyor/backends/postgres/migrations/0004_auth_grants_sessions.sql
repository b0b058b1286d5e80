-- Conveyor schema version 4 (conveyor.auth): the developer role, the worker secrets
-- granted to each token, and console sessions ended by logout.
--
-- * auth_tokens.role may be 'developer' (a submitter that may run code);
-- * auth_tokens.secrets: the names of worker secrets (CONVEYOR_SECRET_<NAME>) the
--   token's tasks may ask for, as a JSON list; existing tokens are granted none;
-- * auth_revoked_sessions: a logged-out session's id until its cookie would have
--   expired anyway (rows past expires_at are dropped on the next logout).

ALTER TABLE auth_tokens DROP CONSTRAINT auth_tokens_role_check;
ALTER TABLE auth_tokens ADD CONSTRAINT auth_tokens_role_check
    CHECK (role IN ('admin', 'operator', 'developer', 'submitter', 'viewer', 'worker'));

ALTER TABLE auth_tokens ADD COLUMN secrets text NOT NULL DEFAULT '[]';

CREATE TABLE auth_revoked_sessions (
    id          text PRIMARY KEY,
    expires_at  timestamptz NOT NULL
);
