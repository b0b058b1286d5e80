-- SQLite schema version 2: the GPUs a task needs, as a column a claim filters on.
--
-- Backfilled from container params (a count or a list of device ids), as
-- conveyor.models.gpus_in_params does; every other kind needs none.  The
-- pending-work index gets gpus as its last column, so that a claim filters on it
-- while reading the index and never reads a passed-over task from the table.

ALTER TABLE tasks ADD COLUMN gpus INTEGER NOT NULL DEFAULT 0;

UPDATE tasks SET gpus = CASE json_type(params, '$.gpus')
        WHEN 'integer' THEN max(json_extract(params, '$.gpus'), 0)
        WHEN 'array' THEN json_array_length(params, '$.gpus')
        ELSE 0 END
    WHERE kind = 'container' AND json_type(params, '$.gpus') IN ('integer', 'array');

DROP INDEX IF EXISTS tasks_ready;
CREATE INDEX tasks_ready ON tasks (priority DESC, id, not_before, kind, gpus)
    WHERE status = 'pending';
