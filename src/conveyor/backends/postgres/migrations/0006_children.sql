-- Conveyor schema version 6 (issue 18): parent and child tasks (WorkerQueue.spawn_children,
-- backends/rules.py).
--
-- * tasks.parent_id names a child's parent (indexed: a parent's children are read by
--   it); tasks.children counts the children a parent's last spawn made;
-- * a parent waiting for its children is pending with not_before = CHILDREN_HOLD
--   (9999-01-01 UTC), so no claim query changes;
-- * the cascades are triggers, in the transaction of the change that causes them
--   whichever statement makes it (complete, fail, reap, cancel, clear), and the events
--   trigger of 0005 emits the cascaded changes too.  A child's trigger locks its parent
--   row first (FOR UPDATE): two last children completing at once are serialised, and
--   the second, reading with a fresh snapshot once it holds the lock, sees the first
--   completed (without it, each would see the other still running and neither would
--   wake the parent).  The parent woken sends NOTIFY conveyor_work in the same
--   transaction.

ALTER TABLE tasks ADD COLUMN parent_id text COLLATE "C";
ALTER TABLE tasks ADD COLUMN children integer NOT NULL DEFAULT 0 CHECK (children >= 0);

CREATE INDEX tasks_parent ON tasks (parent_id, id) WHERE parent_id IS NOT NULL;

CREATE FUNCTION conveyor_child_ended() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    p record;
BEGIN
    SELECT id, status, children, not_before INTO p FROM tasks
        WHERE id = NEW.parent_id FOR UPDATE;
    IF NOT FOUND OR p.status <> 'pending' OR p.children = 0 THEN
        RETURN NULL;
    END IF;
    IF NEW.status = 'completed' THEN
        -- the last child completed: its held parent becomes claimable
        IF p.not_before >= timestamptz '9999-01-01 00:00:00+00' AND NOT EXISTS (
                SELECT 1 FROM tasks c WHERE c.parent_id = NEW.parent_id
                    AND c.status <> 'completed') THEN
            UPDATE tasks SET not_before = NULL, updated_at = now() WHERE id = p.id;
            PERFORM pg_notify('conveyor_work', '');
        END IF;
    ELSE
        -- a child failed for good or was cancelled: its held parent fails, naming it
        UPDATE tasks SET status = 'failed',
            error = CASE WHEN NEW.status = 'cancelled'
                         THEN 'child ' || NEW.id || ' was cancelled'
                         ELSE 'child ' || NEW.id || ' failed: '
                              || coalesce(NEW.error, 'no reason given') END,
            error_code = 'child_failed', not_before = NULL,
            finished_at = now(), updated_at = now()
        WHERE id = p.id;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER tasks_child_ended AFTER UPDATE OF status ON tasks
    FOR EACH ROW WHEN (NEW.parent_id IS NOT NULL
        AND OLD.status IN ('pending', 'processing')
        AND NEW.status IN ('completed', 'failed', 'cancelled'))
    EXECUTE FUNCTION conveyor_child_ended();

-- a parent failed or was cancelled: its pending children are cancelled, its running
-- ones asked to stop (their workers report back as for any cancel); a failed or
-- cancelled parent retried starts over, the old children no longer its own
CREATE FUNCTION conveyor_parent_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IN ('failed', 'cancelled') THEN
        -- SKIP LOCKED: a child locked now is ending (completing, failing) or being
        -- claimed; waiting for it here while its own trigger waits for this parent's
        -- row would deadlock.  It ends on its own: its trigger finds the parent ended.
        UPDATE tasks SET status = 'cancelled',
            error = 'cancelled: parent ' || NEW.id || ' ' || NEW.status,
            error_code = 'cancelled', not_before = NULL,
            finished_at = now(), updated_at = now()
        WHERE id IN (SELECT id FROM tasks WHERE parent_id = NEW.id AND status = 'pending'
                     FOR UPDATE SKIP LOCKED);
        UPDATE tasks SET cancel_requested = true, updated_at = now()
        WHERE id IN (SELECT id FROM tasks WHERE parent_id = NEW.id AND status = 'processing'
                     FOR UPDATE SKIP LOCKED);
    ELSIF NEW.status = 'pending' AND OLD.status IN ('failed', 'cancelled') THEN
        UPDATE tasks SET parent_id = NULL WHERE parent_id = NEW.id;  -- retry sets children 0
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER tasks_parent_changed AFTER UPDATE OF status ON tasks
    FOR EACH ROW WHEN (OLD.children > 0 AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION conveyor_parent_changed();
