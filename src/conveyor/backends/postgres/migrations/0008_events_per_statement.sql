-- Conveyor schema version 8 (issues 17 and 19, docs/events.md): the outbox written once
-- per statement, not once per row.
--
-- 0005's row triggers ran a PL/pgSQL call and an INSERT statement of their own for every
-- row whose status changed: on a drain by real worker processes (claims of 8 to 16 tasks,
-- completions batched, pg_stat_statements and pg_stat_user_functions), 71 us per event,
-- 143 us of the database's ~470 us per task.  These statement triggers see the rows a
-- statement changed through its transition tables and write their events with one
-- INSERT ... SELECT, so a claim or a batch of completions pays the call once.
--
-- What is written is unchanged: one row per state change, in the transaction of the
-- statement that makes it, whichever statement that is, with the same type rule (see
-- conveyor_task_events() below) and the same columns.  A statement trigger fires for
-- every UPDATE of tasks (a heartbeat's, a progress update's): the join of its transition
-- tables finds no status change there and writes nothing.  Order is kept: one task
-- changes once per statement, and its statements are serialised by its row lock; a
-- cascade (0006: a child ending updates its parent) writes the parent's event before
-- the child's, as the row triggers did (AFTER ROW triggers fire before AFTER STATEMENT
-- ones, and the cascade's own statement fires its trigger inside them).

DROP TRIGGER tasks_event_insert ON tasks;
DROP TRIGGER tasks_event_update ON tasks;
DROP FUNCTION conveyor_task_event();

-- A new row is queued; pending -> processing is started; processing -> pending is
-- retrying when the attempt counted (a failure or an expired lease) and queued when
-- it did not (a release); any other way back to pending (a retry of a failed task)
-- is queued; completed, failed, cancelled are themselves.  An event's id: 0005's.
CREATE FUNCTION conveyor_task_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO events (id, type, task_id, kind, status, submitted_by, at, data)
        SELECT 'evt_' || left(md5(random()::text || n.id || clock_timestamp()::text), 24),
               'queued', n.id, n.kind, n.status, n.submitted_by, n.updated_at,
               jsonb_build_object(
                   'external_id', n.external_id,
                   'metadata', coalesce(n.metadata, '{}'::jsonb),
                   'attempt', n.attempts,
                   'worker_id', NULL,
                   'error', n.error,
                   'error_code', n.error_code,
                   'outputs', '[]'::jsonb)
        FROM conveyor_new_tasks n;
    ELSE
        INSERT INTO events (id, type, task_id, kind, status, submitted_by, at, data)
        SELECT 'evt_' || left(md5(random()::text || n.id || clock_timestamp()::text), 24),
               CASE WHEN n.status = 'processing' THEN 'started'
                    WHEN n.status = 'pending' AND o.status = 'processing'
                         AND n.attempts >= o.attempts THEN 'retrying'
                    WHEN n.status = 'pending' THEN 'queued'
                    ELSE n.status END,
               n.id, n.kind, n.status, n.submitted_by, n.updated_at,
               jsonb_build_object(
                   'external_id', n.external_id,
                   'metadata', coalesce(n.metadata, '{}'::jsonb),
                   'attempt', n.attempts,
                   'worker_id', coalesce(n.worker_id, o.worker_id),
                   'error', n.error,
                   'error_code', n.error_code,
                   'outputs', CASE WHEN n.status = 'completed' THEN n.outputs
                                   ELSE '[]'::jsonb END)
        FROM conveyor_new_tasks n JOIN conveyor_old_tasks o ON o.id = n.id
        WHERE o.status IS DISTINCT FROM n.status;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER tasks_events_insert AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS conveyor_new_tasks
    FOR EACH STATEMENT EXECUTE FUNCTION conveyor_task_events();
CREATE TRIGGER tasks_events_update AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS conveyor_old_tasks NEW TABLE AS conveyor_new_tasks
    FOR EACH STATEMENT EXECUTE FUNCTION conveyor_task_events();
