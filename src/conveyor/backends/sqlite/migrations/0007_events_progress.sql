-- SQLite schema version 7 (issue 19, docs/events.md): progress events, throttled per
-- task and off by default.
--
-- * events_config: 'progress_s', the least time between two progress events of one
--   task (0 or no row: none are written); the API's runtime writes it at start from
--   CONVEYOR_EVENTS_PROGRESS_S;
-- * events_progress: when each task's last progress event was written;
-- * a trigger on tasks writes a 'progress' event in the transaction of a running
--   task's progress update when progress events are on and the task's last one is at
--   least progress_s old.  Off, it costs the WHEN clause's lookup of one row.

CREATE TABLE IF NOT EXISTS events_config (name TEXT PRIMARY KEY, value REAL NOT NULL);

CREATE TABLE IF NOT EXISTS events_progress (task_id TEXT PRIMARY KEY, at REAL NOT NULL);

CREATE TRIGGER IF NOT EXISTS tasks_event_progress AFTER UPDATE OF progress ON tasks
WHEN NEW.status = 'processing' AND OLD.status = 'processing'
    AND coalesce((SELECT value FROM events_config WHERE name = 'progress_s'), 0) > 0
    AND NEW.updated_at - coalesce((SELECT at FROM events_progress WHERE task_id = NEW.id), 0)
        >= (SELECT value FROM events_config WHERE name = 'progress_s')
BEGIN
    INSERT INTO events (id, type, task_id, kind, status, submitted_by, at, data)
    VALUES ('evt_' || lower(hex(randomblob(12))), 'progress', NEW.id, NEW.kind, NEW.status,
            NEW.submitted_by, NEW.updated_at,
            json_object('external_id', NEW.external_id,
                        'metadata', json(coalesce(NEW.metadata, '{}')),
                        'attempt', NEW.attempts,
                        'worker_id', NEW.worker_id,
                        'progress', json(NEW.progress)));
    INSERT INTO events_progress (task_id, at) VALUES (NEW.id, NEW.updated_at)
        ON CONFLICT (task_id) DO UPDATE SET at = excluded.at;
END;
