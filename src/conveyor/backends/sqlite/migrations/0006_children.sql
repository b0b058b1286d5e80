-- SQLite schema version 6 (issue 18): parent and child tasks (WorkerQueue.spawn_children,
-- backends/rules.py).
--
-- * tasks.parent_id names a child's parent (indexed: a parent's children are read by it);
--   tasks.children counts the children a parent's last spawn made;
-- * a parent waiting for its children is pending with not_before = CHILDREN_HOLD
--   (9999-01-01, 253370764800 in UNIX seconds), so no claim query changes;
-- * the cascades are triggers, so they happen in the transaction of the change that
--   causes them whichever statement makes it (complete, fail, reap, cancel, clear),
--   and the events triggers of 0005 emit the cascaded changes too.  They need
--   PRAGMA recursive_triggers=ON (the engine sets it on every connection): a cascaded
--   update must fire the events trigger that is already running for its cause.  Each
--   cascade only touches rows in a state it then leaves, so the recursion ends.

ALTER TABLE tasks ADD COLUMN parent_id TEXT;
ALTER TABLE tasks ADD COLUMN children INTEGER NOT NULL DEFAULT 0;

CREATE INDEX IF NOT EXISTS tasks_parent ON tasks (parent_id, id) WHERE parent_id IS NOT NULL;

-- the last child completed: its held parent becomes claimable (its next run sees
-- children > 0 and does what comes after them)
CREATE TRIGGER IF NOT EXISTS tasks_child_completed AFTER UPDATE OF status ON tasks
WHEN NEW.parent_id IS NOT NULL AND NEW.status = 'completed' AND OLD.status <> 'completed'
BEGIN
    UPDATE tasks SET not_before = NULL, updated_at = NEW.updated_at
    WHERE id = NEW.parent_id AND status = 'pending' AND children > 0
        AND not_before >= 253370764800
        AND NOT EXISTS (SELECT 1 FROM tasks c INDEXED BY tasks_parent
                        WHERE c.parent_id = NEW.parent_id AND c.status <> 'completed');
END;

-- a child failed for good or was cancelled: its held parent fails, naming it
CREATE TRIGGER IF NOT EXISTS tasks_child_failed AFTER UPDATE OF status ON tasks
WHEN NEW.parent_id IS NOT NULL AND NEW.status IN ('failed', 'cancelled')
    AND OLD.status IN ('pending', 'processing')
BEGIN
    UPDATE tasks SET status = 'failed',
        error = CASE WHEN NEW.status = 'cancelled' THEN 'child ' || NEW.id || ' was cancelled'
                     ELSE 'child ' || NEW.id || ' failed: '
                          || coalesce(NEW.error, 'no reason given') END,
        error_code = 'child_failed', not_before = NULL,
        finished_at = NEW.updated_at, updated_at = NEW.updated_at
    WHERE id = NEW.parent_id AND status = 'pending' AND children > 0;
END;

-- a parent failed or was cancelled: its pending children are cancelled, its running
-- ones asked to stop (their workers report back as for any cancel)
CREATE TRIGGER IF NOT EXISTS tasks_parent_ended AFTER UPDATE OF status ON tasks
WHEN NEW.children > 0 AND NEW.status IN ('failed', 'cancelled')
BEGIN
    UPDATE tasks SET status = 'cancelled',
        error = 'cancelled: parent ' || NEW.id || ' ' || NEW.status,
        error_code = 'cancelled', not_before = NULL,
        finished_at = NEW.updated_at, updated_at = NEW.updated_at
    WHERE parent_id = NEW.id AND status = 'pending';
    UPDATE tasks SET cancel_requested = 1, updated_at = NEW.updated_at
    WHERE parent_id = NEW.id AND status = 'processing';
END;

-- a failed or cancelled parent retried: it starts over; the old children stay as they
-- ended but are no longer its own
CREATE TRIGGER IF NOT EXISTS tasks_parent_retried AFTER UPDATE OF status ON tasks
WHEN NEW.children > 0 AND NEW.status = 'pending' AND OLD.status IN ('failed', 'cancelled')
BEGIN
    UPDATE tasks SET parent_id = NULL WHERE parent_id = NEW.id;
    UPDATE tasks SET children = 0 WHERE id = NEW.id;
END;
