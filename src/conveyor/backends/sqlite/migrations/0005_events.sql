-- SQLite schema version 5 (issue 19, docs/events.md): caller data on tasks, the event
-- outbox, webhook endpoints and their deliveries.
--
-- * tasks.external_id (a caller's own id, indexed for GET /api/tasks?external_id=)
--   and tasks.metadata (a small JSON object returned untouched);
-- * events: the outbox.  Triggers on tasks write one row per state change in the
--   transaction that makes the change, whichever statement makes it, so a state
--   change and its event commit together or not at all.  seq (the rowid: one writer
--   at a time, so seq order is commit order) is the stream's position and the
--   table's only key: a state change pays one row and no other page.  Not
--   AUTOINCREMENT (its sqlite_sequence row would be one more page per commit): a
--   rowid is max + 1, and the prune never deletes the newest event, so a seq is
--   never given twice;
-- * events_cursor: how far the dispatcher has made deliveries (the 'fanout' row);
-- * webhook_endpoints: subscriptions (task_id NULL) and one task's own webhooks;
-- * webhook_deliveries: one event to one endpoint, with its last try (the log).
--
-- Which change is which event: a new row is queued; pending -> processing is
-- started; processing -> pending is retrying when the attempt counted (a failure or
-- an expired lease) and queued when it did not (a release); any other way back to
-- pending (a retry of a failed task) is queued; completed, failed, cancelled are
-- themselves.

ALTER TABLE tasks ADD COLUMN external_id TEXT;
ALTER TABLE tasks ADD COLUMN metadata TEXT;

CREATE INDEX IF NOT EXISTS tasks_external ON tasks (external_id, created_at DESC, id DESC)
    WHERE external_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS events (
    seq          INTEGER PRIMARY KEY,
    id           TEXT NOT NULL,
    type         TEXT NOT NULL,
    task_id      TEXT NOT NULL,
    kind         TEXT NOT NULL,
    status       TEXT NOT NULL,
    submitted_by TEXT,
    at           REAL NOT NULL,
    data         TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS events_cursor (name TEXT PRIMARY KEY, seq INTEGER NOT NULL);

CREATE TABLE IF NOT EXISTS webhook_endpoints (
    id          TEXT PRIMARY KEY,
    url         TEXT NOT NULL,
    secret      TEXT NOT NULL,
    events      TEXT NOT NULL DEFAULT '[]',
    kinds       TEXT NOT NULL DEFAULT '[]',
    task_id     TEXT,
    description TEXT NOT NULL DEFAULT '',
    created_at  REAL NOT NULL,
    created_by  TEXT
);
CREATE INDEX IF NOT EXISTS webhook_endpoints_task ON webhook_endpoints (task_id)
    WHERE task_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id              TEXT PRIMARY KEY,
    event_id        TEXT NOT NULL,
    event_seq       INTEGER NOT NULL,
    event_type      TEXT NOT NULL,
    endpoint_id     TEXT NOT NULL,
    task_id         TEXT NOT NULL,
    state           TEXT NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_at      REAL NOT NULL,
    next_at         REAL,
    last_at         REAL,
    last_status     INTEGER,
    last_error      TEXT,
    last_latency_ms REAL,
    last_body       TEXT,
    UNIQUE (event_id, endpoint_id)
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (next_at)
    WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_order
    ON webhook_deliveries (endpoint_id, task_id, event_seq) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_endpoint
    ON webhook_deliveries (endpoint_id, event_seq DESC, id DESC);
CREATE INDEX IF NOT EXISTS webhook_deliveries_task ON webhook_deliveries (task_id, event_seq);

CREATE TRIGGER IF NOT EXISTS tasks_event_insert AFTER INSERT ON tasks
BEGIN
    INSERT INTO events (id, type, task_id, kind, status, submitted_by, at, data)
    VALUES ('evt_' || lower(hex(randomblob(12))), 'queued', NEW.id, NEW.kind, NEW.status,
            NEW.submitted_by, NEW.updated_at,
            json_object('external_id', NEW.external_id,
                        'metadata', json(coalesce(NEW.metadata, '{}')),
                        'attempt', NEW.attempts));
END;

CREATE TRIGGER IF NOT EXISTS tasks_event_update AFTER UPDATE OF status ON tasks
WHEN OLD.status IS NOT NEW.status
BEGIN
    INSERT INTO events (id, type, task_id, kind, status, submitted_by, at, data)
    VALUES ('evt_' || lower(hex(randomblob(12))),
            CASE
                WHEN NEW.status = 'processing' THEN 'started'
                WHEN NEW.status = 'pending' AND OLD.status = 'processing'
                     AND NEW.attempts >= OLD.attempts THEN 'retrying'
                WHEN NEW.status = 'pending' THEN 'queued'
                ELSE NEW.status
            END,
            NEW.id, NEW.kind, NEW.status, NEW.submitted_by, NEW.updated_at,
            json_object('external_id', NEW.external_id,
                        'metadata', json(coalesce(NEW.metadata, '{}')),
                        'attempt', NEW.attempts,
                        'worker_id', coalesce(NEW.worker_id, OLD.worker_id),
                        'error', NEW.error,
                        'error_code', NEW.error_code,
                        'outputs', CASE WHEN NEW.status = 'completed'
                                        THEN json(NEW.outputs) ELSE json('[]') END));
END;
