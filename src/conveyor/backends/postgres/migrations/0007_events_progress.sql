-- Conveyor schema version 7 (issue 19, docs/events.md): progress events, throttled per
-- task and off by default.
--
-- * events_config: 'progress_s', the least time between two progress events of one
--   task (0 or no row: none are written); the API's runtime writes it at start from
--   CONVEYOR_EVENTS_PROGRESS_S;
-- * events_progress: when each task's last progress event was written;
-- * a trigger on tasks writes a 'progress' event in the transaction of a running
--   task's progress update when progress events are on and the task's last one is at
--   least progress_s old.  Off, it costs one lookup of one row per progress update.

CREATE TABLE events_config (name text PRIMARY KEY, value double precision NOT NULL);

CREATE TABLE events_progress (task_id text COLLATE "C" PRIMARY KEY, at timestamptz NOT NULL);

CREATE FUNCTION conveyor_task_progress_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    every double precision;
    last timestamptz;
BEGIN
    SELECT value INTO every FROM events_config WHERE name = 'progress_s';
    IF every IS NULL OR every <= 0 THEN
        RETURN NULL;
    END IF;
    SELECT at INTO last FROM events_progress WHERE task_id = NEW.id;
    IF last IS NOT NULL AND NEW.updated_at - last < make_interval(secs => every) THEN
        RETURN NULL;
    END IF;
    INSERT INTO events (id, type, task_id, kind, status, submitted_by, at, data)
    VALUES ('evt_' || left(md5(random()::text || NEW.id || clock_timestamp()::text), 24), 'progress', NEW.id,
            NEW.kind, NEW.status, NEW.submitted_by, NEW.updated_at,
            jsonb_build_object(
                'external_id', NEW.external_id,
                'metadata', coalesce(NEW.metadata, '{}'::jsonb),
                'attempt', NEW.attempts,
                'worker_id', NEW.worker_id,
                'progress', NEW.progress));
    INSERT INTO events_progress (task_id, at) VALUES (NEW.id, NEW.updated_at)
        ON CONFLICT (task_id) DO UPDATE SET at = excluded.at;
    RETURN NULL;
END;
$$;

CREATE TRIGGER tasks_event_progress AFTER UPDATE OF progress ON tasks
    FOR EACH ROW WHEN (OLD.status = 'processing' AND NEW.status = 'processing')
    EXECUTE FUNCTION conveyor_task_progress_event();
