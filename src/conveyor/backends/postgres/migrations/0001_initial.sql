-- Conveyor schema version 1: tasks, task logs, workers.
--
-- Applied by `conveyor db upgrade` inside one transaction (with the version
-- row); never edit a released migration, add the next numbered file instead.

CREATE TABLE tasks (
    id               text COLLATE "C" PRIMARY KEY,
    kind             text NOT NULL,
    status           text NOT NULL
        CHECK (status IN ('pending', 'processing', 'completed', 'failed', 'cancelled')),
    priority         integer NOT NULL DEFAULT 0,
    input_bucket     text,
    input_key        text,
    params           jsonb NOT NULL DEFAULT '{}',
    outputs          jsonb NOT NULL DEFAULT '[]',
    progress         jsonb NOT NULL DEFAULT '{}',
    attempts         integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL DEFAULT 3,
    error            text,
    error_code       text,
    worker_id        text,
    lease_token      text,
    lease_expires    timestamptz,
    cancel_requested boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    started_at       timestamptz,
    finished_at      timestamptz,
    not_before       timestamptz,
    date_partition   text COLLATE "C" NOT NULL,
    idempotency_key  text UNIQUE,
    submitted_by     text,
    trigger          text NOT NULL DEFAULT 'api',
    history          jsonb NOT NULL DEFAULT '[]'
) WITH (fillfactor = 80);  -- room for the frequent progress/lease updates

-- listing: newest first, by date and/or status (keyset over created_at, id)
CREATE INDEX tasks_created ON tasks (created_at DESC, id DESC);
CREATE INDEX tasks_date ON tasks (date_partition, created_at DESC, id DESC);
CREATE INDEX tasks_status ON tasks (status, created_at DESC, id DESC);
CREATE INDEX tasks_date_status ON tasks (date_partition, status, created_at DESC, id DESC);
-- dashboard counts of what finished today
CREATE INDEX tasks_finished ON tasks (status, finished_at);
-- the queue: only pending rows, in claim order per kind, so that a claim reads
-- just the top of each kind it can run, however long the queue of other kinds is
CREATE INDEX tasks_ready ON tasks (kind, priority DESC, id) WHERE status = 'pending';
-- the reaper: only processing rows, by lease expiry
CREATE INDEX tasks_leases ON tasks (lease_expires) WHERE status = 'processing';

CREATE TABLE task_logs (
    seq     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id text COLLATE "C" NOT NULL,
    attempt integer NOT NULL,
    ts      timestamptz NOT NULL,
    stream  text NOT NULL,
    line    text NOT NULL
);
CREATE INDEX task_logs_task ON task_logs (task_id, seq);

CREATE TABLE workers (
    id        text PRIMARY KEY,
    info      jsonb NOT NULL,
    last_seen timestamptz NOT NULL
);
