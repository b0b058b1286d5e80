-- SQLite schema version 1: tasks, task logs, workers and the schema version.
--
-- Applied on open, inside one transaction with the version (``meta.schema_version``);
-- never edit a released migration, add the next numbered file instead.  Times are
-- UNIX seconds (REAL), JSON is TEXT.  ``IF NOT EXISTS`` throughout: Conveyor wrote
-- these tables before its SQLite schema was kept as numbered files.

CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    input_bucket TEXT,
    input_key TEXT,
    params TEXT NOT NULL DEFAULT '{}',
    outputs TEXT NOT NULL DEFAULT '[]',
    progress TEXT NOT NULL DEFAULT '{}',
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL DEFAULT 3,
    error TEXT,
    error_code TEXT,
    worker_id TEXT,
    lease_token TEXT,
    lease_expires REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    not_before REAL,
    date_partition TEXT NOT NULL,
    idempotency_key TEXT UNIQUE,
    submitted_by TEXT,
    trigger TEXT NOT NULL DEFAULT 'api',
    history TEXT NOT NULL DEFAULT '[]'
);
-- listing: newest first, by date and/or status and/or kind (keyset over created_at, id)
CREATE INDEX IF NOT EXISTS tasks_date ON tasks (date_partition, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS tasks_status ON tasks (status, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS tasks_date_status
    ON tasks (date_partition, status, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS tasks_created ON tasks (created_at DESC, id DESC);
-- dashboard counts and throughput of what finished
CREATE INDEX IF NOT EXISTS tasks_finished ON tasks (status, finished_at);
CREATE INDEX IF NOT EXISTS tasks_kind ON tasks (kind, created_at DESC, id DESC);
-- the queue: only pending rows, in claim order
CREATE INDEX IF NOT EXISTS tasks_ready ON tasks (priority DESC, id, not_before, kind)
    WHERE status = 'pending';
-- the reaper: only processing rows, by lease expiry
CREATE INDEX IF NOT EXISTS tasks_leases ON tasks (lease_expires)
    WHERE status = 'processing';

CREATE TABLE IF NOT EXISTS task_logs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    ts REAL NOT NULL,
    stream TEXT NOT NULL,
    line TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS task_logs_task ON task_logs (task_id, attempt, seq);

CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    info TEXT NOT NULL,
    last_seen REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
