-- Conveyor schema version 5 (issue 19, docs/events.md): caller data on tasks, the
-- event outbox, webhook endpoints and their deliveries.
--
-- * tasks.external_id (a caller's own id, indexed for GET /api/tasks?external_id=)
--   and tasks.metadata (a small JSON object returned untouched);
-- * events: the outbox.  A trigger on tasks writes one row per state change in the
--   transaction that makes the change, whichever statement makes it, so a state
--   change and its event commit together or not at all.  n is the order rows were
--   written; seq, the stream's position, is given later by one sequencer at a time
--   (under an advisory lock, in n order), so that seq order is the order rows
--   became visible and a reader of "seq > since" never skips a row committed late.
--   Its only index on the write path is the partial one of rows not numbered yet;
-- * events_cursor: how far the dispatcher has made deliveries (the 'fanout' row);
-- * webhook_endpoints: subscriptions (task_id NULL) and one task's own webhooks;
-- * webhook_deliveries: one event to one endpoint, with its last try (the log).
--
-- Which change is which event: see conveyor_task_event() below.

ALTER TABLE tasks ADD COLUMN external_id text;
ALTER TABLE tasks ADD COLUMN metadata jsonb;

CREATE INDEX tasks_external ON tasks (external_id, created_at DESC, id DESC)
    WHERE external_id IS NOT NULL;

CREATE TABLE events (
    n            bigserial PRIMARY KEY,
    id           text COLLATE "C" NOT NULL,
    seq          bigint,
    type         text NOT NULL,
    task_id      text COLLATE "C" NOT NULL,
    kind         text NOT NULL,
    status       text NOT NULL,
    submitted_by text,
    at           timestamptz NOT NULL,
    data         jsonb NOT NULL
);
CREATE INDEX events_unsequenced ON events (n) WHERE seq IS NULL;
CREATE UNIQUE INDEX events_seq ON events (seq) WHERE seq IS NOT NULL;

CREATE TABLE events_cursor (name text PRIMARY KEY, seq bigint NOT NULL);

CREATE TABLE webhook_endpoints (
    id          text COLLATE "C" PRIMARY KEY,
    url         text NOT NULL,
    secret      text NOT NULL,
    events      jsonb NOT NULL DEFAULT '[]',
    kinds       jsonb NOT NULL DEFAULT '[]',
    task_id     text COLLATE "C",
    description text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL,
    created_by  text
);
CREATE INDEX webhook_endpoints_task ON webhook_endpoints (task_id) WHERE task_id IS NOT NULL;

CREATE TABLE webhook_deliveries (
    id              text COLLATE "C" PRIMARY KEY,
    event_id        text COLLATE "C" NOT NULL,
    event_seq       bigint NOT NULL,
    event_type      text NOT NULL,
    endpoint_id     text COLLATE "C" NOT NULL,
    task_id         text COLLATE "C" NOT NULL,
    state           text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL,
    next_at         timestamptz,
    last_at         timestamptz,
    last_status     integer,
    last_error      text,
    last_latency_ms double precision,
    last_body       text,
    UNIQUE (event_id, endpoint_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_order
    ON webhook_deliveries (endpoint_id, task_id, event_seq) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_endpoint
    ON webhook_deliveries (endpoint_id, event_seq DESC, id DESC);
CREATE INDEX webhook_deliveries_task ON webhook_deliveries (task_id, event_seq);

-- An event's id is 96 bits of md5 over random(), the task id and the clock: unique, which
-- is all an id needs; gen_random_uuid() (a cryptographic random source) cost about
-- 29 us per event here, more than the rest of the trigger (bench/events.py).
--
-- A new row is queued; pending -> processing is started; processing -> pending is
-- retrying when the attempt counted (a failure or an expired lease) and queued when
-- it did not (a release); any other way back to pending (a retry of a failed task)
-- is queued; completed, failed, cancelled are themselves.
CREATE FUNCTION conveyor_task_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    kind_of text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        kind_of := 'queued';
    ELSIF NEW.status = 'processing' THEN
        kind_of := 'started';
    ELSIF NEW.status = 'pending' AND OLD.status = 'processing'
          AND NEW.attempts >= OLD.attempts THEN
        kind_of := 'retrying';
    ELSIF NEW.status = 'pending' THEN
        kind_of := 'queued';
    ELSE
        kind_of := NEW.status;
    END IF;
    INSERT INTO events (id, type, task_id, kind, status, submitted_by, at, data)
    VALUES ('evt_' || left(md5(random()::text || NEW.id || clock_timestamp()::text), 24), kind_of, NEW.id, NEW.kind,
            NEW.status, NEW.submitted_by, NEW.updated_at,
            jsonb_build_object(
                'external_id', NEW.external_id,
                'metadata', coalesce(NEW.metadata, '{}'::jsonb),
                'attempt', NEW.attempts,
                'worker_id', CASE WHEN TG_OP = 'INSERT' THEN NULL
                                  ELSE coalesce(NEW.worker_id, OLD.worker_id) END,
                'error', NEW.error,
                'error_code', NEW.error_code,
                'outputs', CASE WHEN NEW.status = 'completed' THEN NEW.outputs
                                ELSE '[]'::jsonb END));
    RETURN NULL;
END;
$$;

CREATE TRIGGER tasks_event_insert AFTER INSERT ON tasks
    FOR EACH ROW EXECUTE FUNCTION conveyor_task_event();
CREATE TRIGGER tasks_event_update AFTER UPDATE OF status ON tasks
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION conveyor_task_event();
