-- Conveyor schema version 2: API tokens (hashes only), server secrets, used
-- enrollment nonces and the audit log (conveyor.auth).

CREATE TABLE auth_tokens (
    id          text COLLATE "C" PRIMARY KEY,
    name        text NOT NULL,
    role        text NOT NULL
        CHECK (role IN ('admin', 'operator', 'submitter', 'viewer', 'worker')),
    token_hash  text NOT NULL,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz,
    revoked_at  timestamptz,
    created_by  text,
    worker_id   text
);
CREATE INDEX auth_tokens_worker ON auth_tokens (worker_id) WHERE worker_id IS NOT NULL;

CREATE TABLE auth_secrets (
    name   text PRIMARY KEY,
    value  text NOT NULL
);

CREATE TABLE auth_nonces (
    nonce       text PRIMARY KEY,
    expires_at  timestamptz NOT NULL
);

CREATE TABLE audit_log (
    id      text COLLATE "C" PRIMARY KEY,
    at      timestamptz NOT NULL,
    actor   text NOT NULL,
    role    text NOT NULL,
    action  text NOT NULL,
    target  text,
    ip      text,
    ok      boolean NOT NULL,
    detail  text
);
