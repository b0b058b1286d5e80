-- Conveyor schema version 3: the GPUs a task needs, as a column a claim filters on.
--
-- Backfilled from container params (a count or a list of device ids), as
-- conveyor.models.gpus_in_params does; every other kind needs none.  The
-- pending-work index gets gpus as a last key column: a worker's claim
-- (kind = $k AND gpus <= $free ORDER BY priority DESC, id) still reads the
-- index in claim order, and checks gpus on the index entry itself, so tasks
-- needing more GPUs than the worker has free are skipped without a heap visit.
-- The index is partial (pending rows only), so rebuilding it is quick.

ALTER TABLE tasks ADD COLUMN gpus integer NOT NULL DEFAULT 0 CHECK (gpus >= 0);

UPDATE tasks SET gpus = CASE jsonb_typeof(params -> 'gpus')
        WHEN 'number' THEN greatest((params ->> 'gpus')::integer, 0)
        WHEN 'array' THEN jsonb_array_length(params -> 'gpus')
        ELSE 0 END
    WHERE kind = 'container' AND jsonb_typeof(params -> 'gpus') IN ('number', 'array');

DROP INDEX tasks_ready;
CREATE INDEX tasks_ready ON tasks (kind, priority DESC, id, gpus) WHERE status = 'pending';
