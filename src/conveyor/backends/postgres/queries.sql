-- The PostgreSQL engine's fixed statements, loaded by name (engine.py: QUERIES[name]).
--
-- Every worker-facing call is one statement in autocommit mode, hence its own short
-- transaction.  Parameters are psycopg's (%s, %(name)s).  {{ name }} is a fragment the
-- engine fills in when it loads this file:
--   {{ columns }}          the tasks columns, in the order submit writes them
--   {{ channel }}          the NOTIFY channel that wakes idle workers
--   {{ end_failed_attempt }}, {{ end_expired_attempt }}
--                          the SET list of rules.end_attempt (cancelled, back to pending
--                          after the back-off, or failed), for fail and for reap
--   {{ close_completed_attempt }}, {{ close_released_attempt }}
--                          rules.close_attempt on the history array
--   {{ cancelled_by_request }}, {{ cancelled_code }}, {{ queue_cleared }}
--                          the error and code a cancel leaves (rules.py)
--   {{ histograms }}, {{ may_have_expired }}
--                          the metrics aggregate's pieces (backends/sql.py)
-- The claim (one branch per kind) and list (its filters) are built in engine.py.


-- name: submit
-- Insert unless the idempotency key is taken; wake idle workers in the same transaction.
WITH ins AS (
    INSERT INTO tasks ({{ columns }})
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
            %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT (idempotency_key) DO NOTHING RETURNING id)
SELECT ins.id, pg_notify('{{ channel }}', '') FROM ins;

-- name: get_by_idempotency_key
SELECT {{ columns }} FROM tasks WHERE idempotency_key = %s;

-- name: get
SELECT {{ columns }} FROM tasks WHERE id = %s;

-- name: get_for_update
SELECT {{ columns }} FROM tasks WHERE id = %s FOR UPDATE;

-- name: heartbeat
-- Record the worker and renew every lease it still holds, in one statement; the rows
-- returned are the leases renewed, with their cancel requests.  The rows are found by
-- primary key, as in complete_many (l.processing).
WITH w AS (
    INSERT INTO workers (id, info, last_seen)
    VALUES (%(id)s, jsonb_set(%(info)s::jsonb, '{last_seen}', to_jsonb(now())), now())
    ON CONFLICT (id) DO UPDATE SET info = excluded.info, last_seen = excluded.last_seen),
l AS MATERIALIZED (
    SELECT l.*, 'processing'::text AS processing
    FROM unnest(%(ids)s::text[], %(tokens)s::text[]) AS l(id, token)),
r AS (
    UPDATE tasks t SET lease_expires = now() + make_interval(secs => %(lease_s)s::float8)
    FROM l WHERE t.id = l.id AND t.status = l.processing AND t.lease_token = l.token
    RETURNING t.id, t.cancel_requested)
SELECT id, cancel_requested FROM r;

-- name: claim_commit_async
-- The claim's transaction commits without waiting for its WAL to reach the disk.  Its
-- loss in a server crash is harmless: the task is pending again (the attempt not
-- counted), and the worker that ran it meanwhile is fenced off by its lease token
-- (complete, fail, heartbeat find no such lease); every later synchronous commit (the
-- task's completion first of all) flushes the claim with it.  docs/operations.md.
SET LOCAL synchronous_commit = off;

-- name: progress
-- Fenced: no row updated means the lease is lost.
UPDATE tasks SET progress = %s, updated_at = now()
WHERE id = %s AND status = 'processing' AND lease_token = %s;

-- name: complete
-- Fenced; the lease token stays on the completed row, so a repeated completion (its
-- answer was lost) is recognised (rules.completed_by) and answered the same.
UPDATE tasks SET status = 'completed', outputs = %(outputs)s, progress = %(progress)s,
    error = NULL, error_code = NULL, lease_expires = NULL,
    finished_at = now(), updated_at = now(),
    history = {{ close_completed_attempt }}
WHERE id = %(id)s AND status = 'processing' AND lease_token = %(token)s
RETURNING {{ columns }};

-- name: complete_many
-- complete, for a batch in one statement: each row fenced by its own lease token; the
-- log lines of the rows completed are appended in the same statement (the caller holds
-- each task's log_lock), so a task's log is whole once its outcome shows.  Returns the
-- ids completed; the engine checks the others for a repeat (rules.completed_by).
-- The rows are found by primary key: i is materialized and carries the status to match
-- (i.processing), so that no partial index of processing rows (tasks_leases) can stand
-- in for the key.  Such an index keeps an entry for every row that was processing until
-- a vacuum removes it, and a bitmap scan, which the planner took for a few processing
-- rows, never marks them dead: each call read every task completed since the last
-- vacuum (1,212 index entries and 123 heap pages to find 12 rows, 1,000 tasks into a
-- drain).  The heartbeat's renewal finds its rows the same way.
WITH i AS MATERIALIZED (
    SELECT i.*, 'processing'::text AS processing
    FROM unnest(%(ids)s::text[], %(tokens)s::text[], %(outputs)s::jsonb[])
        AS i(id, token, outputs)),
done AS (
    UPDATE tasks t SET status = 'completed', outputs = i.outputs, progress = %(progress)s,
        error = NULL, error_code = NULL, lease_expires = NULL,
        finished_at = now(), updated_at = now(),
        history = {{ close_completed_attempt }}
    FROM i WHERE t.id = i.id AND t.status = i.processing AND t.lease_token = i.token
    RETURNING t.id),
logged AS (
    INSERT INTO task_logs (task_id, attempt, ts, stream, line)
    SELECT l.task_id, l.attempt, l.ts, l.stream, l.line
    FROM unnest(%(log_ids)s::text[], %(log_attempts)s::int[], %(log_ts)s::timestamptz[],
                %(log_streams)s::text[], %(log_lines)s::text[])
        WITH ORDINALITY AS l(task_id, attempt, ts, stream, line, n)
    WHERE l.task_id IN (SELECT id FROM done)
    ORDER BY l.n)
SELECT id FROM done;

-- name: log_locks
-- log_lock for several tasks, taken in id order (two batches never wait on each other
-- in a cycle).
SELECT count(pg_advisory_xact_lock(%(class)s, hashtext(x)))
FROM (SELECT x FROM unnest(%(ids)s::text[]) AS x ORDER BY x) AS s;

-- name: outputs_committed
UPDATE tasks SET outputs = %s::jsonb WHERE id = %s AND status = 'completed';

-- name: fail
-- Fenced; wakes idle workers when the task goes back to pending.
WITH u AS (
    UPDATE tasks SET {{ end_failed_attempt }}
    WHERE id = %(id)s AND status = 'processing' AND lease_token = %(token)s
    RETURNING {{ columns }})
SELECT u.* FROM u
LEFT JOIN LATERAL (SELECT pg_notify('{{ channel }}', '') WHERE u.status = 'pending') AS n ON true;

-- name: release
-- Fenced: back to pending without counting the attempt (after delay_s when it is
-- positive), or cancelled if that was asked; wakes idle workers when pending.
WITH u AS (
    UPDATE tasks SET
        status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'pending' END,
        attempts = CASE WHEN cancel_requested THEN attempts ELSE greatest(attempts - 1, 0) END,
        error = CASE WHEN cancel_requested THEN {{ cancelled_by_request }} ELSE error END,
        error_code = CASE WHEN cancel_requested THEN {{ cancelled_code }} ELSE error_code END,
        worker_id = CASE WHEN cancel_requested THEN worker_id END,
        progress = CASE WHEN cancel_requested THEN progress ELSE %(progress)s END,
        lease_token = NULL, lease_expires = NULL,
        not_before = CASE WHEN cancel_requested THEN NULL WHEN %(delay_s)s::float8 > 0
            THEN now() + make_interval(secs => %(delay_s)s::float8) ELSE not_before END,
        updated_at = now(),
        finished_at = CASE WHEN cancel_requested THEN now() END,
        history = {{ close_released_attempt }}
    WHERE id = %(id)s AND status = 'processing' AND lease_token = %(token)s
    RETURNING {{ columns }})
SELECT u.* FROM u
LEFT JOIN LATERAL (SELECT pg_notify('{{ channel }}', '') WHERE u.status = 'pending') AS n ON true;

-- name: hold_parent
-- spawn_children: the leased parent handed back without counting the attempt, held
-- until its last child completes (0006's trigger clears the hold); the lease token
-- stays on the row, so a repeated call is recognised (rules.spawn_repeat).
UPDATE tasks SET status = 'pending', attempts = greatest(attempts - 1, 0),
    children = %(children)s, lease_expires = NULL, worker_id = NULL,
    not_before = %(hold)s, updated_at = now(), progress = %(progress)s::jsonb,
    history = {{ close_spawned_attempt }}
WHERE id = %(id)s AND status = 'processing' AND lease_token = %(token)s
RETURNING {{ columns }};

-- name: children
SELECT {{ columns }} FROM tasks WHERE parent_id = %s ORDER BY id;

-- name: reaper_lock
-- One reaper at a time across hosts; the others return at once.
SELECT pg_try_advisory_xact_lock(%s) AS got;

-- name: reap
-- Expired leases, locked SKIP LOCKED and checked again: a lease renewed meanwhile is
-- left alone and no attempt is counted twice.
WITH expired AS (
    SELECT id FROM tasks WHERE status = 'processing' AND lease_expires < now()
    ORDER BY lease_expires FOR UPDATE SKIP LOCKED)
UPDATE tasks SET {{ end_expired_attempt }}
FROM expired WHERE tasks.id = expired.id
    AND tasks.status = 'processing' AND tasks.lease_expires < now()
RETURNING tasks.status;

-- name: notify
NOTIFY {{ channel }};

-- name: listen
LISTEN {{ channel }};

-- name: cancel_pending
UPDATE tasks SET status = 'cancelled', error = {{ cancelled_by_request }},
    error_code = {{ cancelled_code }}, not_before = NULL, finished_at = now(),
    updated_at = now()
WHERE id = %s
RETURNING {{ columns }};

-- name: request_cancel
-- A running task: its worker learns on its next heartbeat, stops it and reports back.
UPDATE tasks SET cancel_requested = true, updated_at = now() WHERE id = %s
RETURNING {{ columns }};

-- name: retry
-- A retried parent starts over: children 0 (0006's trigger unlinks the old ones).
UPDATE tasks SET status = 'pending', attempts = 0, children = 0, error = NULL,
    error_code = NULL, outputs = '[]', progress = %s, cancel_requested = false,
    not_before = NULL, finished_at = NULL, worker_id = NULL, updated_at = now()
WHERE id = %s
RETURNING {{ columns }};

-- name: clear_pending
UPDATE tasks SET status = 'cancelled', error = {{ queue_cleared }},
    error_code = {{ cancelled_code }}, not_before = NULL, finished_at = now(),
    updated_at = now()
WHERE status = 'pending';

-- name: counts
SELECT
    (SELECT count(*) FROM tasks WHERE status = 'pending'
        AND (not_before IS NULL OR not_before <= now())) AS pending,
    (SELECT count(*) FROM tasks WHERE status = 'pending' AND not_before > now()
        AND not_before < {{ children_hold }}) AS delayed,
    (SELECT count(*) FROM tasks WHERE status = 'pending'
        AND not_before >= {{ children_hold }}) AS waiting_for_children,
    (SELECT count(*) FROM tasks WHERE status = 'processing') AS processing,
    (SELECT count(*) FROM tasks WHERE status = 'completed'
        AND finished_at >= %(lo)s AND finished_at < %(hi)s) AS completed_today,
    (SELECT count(*) FROM tasks WHERE status = 'failed'
        AND finished_at >= %(lo)s AND finished_at < %(hi)s) AS failed_today,
    (SELECT count(*) FROM tasks WHERE status = 'cancelled'
        AND finished_at >= %(lo)s AND finished_at < %(hi)s) AS cancelled_today;

-- name: throughput
-- One aggregate over the (status, finished_at) index.
SELECT floor(extract(epoch FROM finished_at - %s) / %s)::int AS w, status, count(*) AS n
FROM tasks WHERE status IN ('completed', 'failed') AND finished_at >= %s
GROUP BY 1, 2;

-- name: workers
SELECT info FROM workers
WHERE last_seen >= now() - make_interval(secs => %s::float8) ORDER BY id;

-- name: ping
SELECT 1;

-- name: metrics_snapshot
-- One pass over the table: counts, retries, lease expiries and both histograms.
SELECT kind, st, count(*) AS n,
    coalesce(sum(greatest(attempts - 1, 0)), 0) AS retries,
    coalesce(sum(CASE WHEN {{ may_have_expired }} THEN (SELECT count(*)
        FROM jsonb_array_elements(history) e WHERE e->>'outcome' = 'lease_expired')
        ELSE 0 END), 0) AS expired,
    {{ histograms }}
FROM (SELECT kind, status, attempts, history,
        CASE WHEN status = 'pending' AND not_before >= {{ children_hold }}
                THEN 'waiting_for_children'
            WHEN status = 'pending' AND not_before > now() THEN 'delayed'
            ELSE status END AS st,
        CASE WHEN status = 'completed' AND started_at IS NOT NULL THEN
            greatest(extract(epoch FROM finished_at - started_at), 0)::float8 END AS run,
        CASE WHEN started_at IS NOT NULL THEN
            greatest(extract(epoch FROM started_at - created_at), 0)::float8 END AS wait
    FROM tasks) AS t
GROUP BY kind, st;

-- name: log_lock
-- One appender per task at a time: seq order is commit order, so a reader tailing
-- with after_seq never skips a line committed late.
SELECT pg_advisory_xact_lock(%s, hashtext(%s));

-- name: append_logs
INSERT INTO task_logs (task_id, attempt, ts, stream, line)
SELECT %s, %s, l.ts, l.stream, l.line
FROM unnest(%s::timestamptz[], %s::text[], %s::text[]) WITH ORDINALITY AS l(ts, stream, line, n)
ORDER BY l.n;

-- name: read_logs
SELECT seq, attempt, ts, stream, line FROM task_logs
WHERE task_id = %(task_id)s AND seq > %(after)s
ORDER BY seq LIMIT %(limit)s;

-- name: read_attempt_logs
SELECT seq, attempt, ts, stream, line FROM task_logs
WHERE task_id = %(task_id)s AND seq > %(after)s AND attempt = %(attempt)s
ORDER BY seq LIMIT %(limit)s;


-- Schema versions (schema.py): conveyor_schema holds one row per migration applied.

-- name: migrate_lock
SELECT pg_advisory_xact_lock(%s);

-- name: schema_table
CREATE TABLE IF NOT EXISTS conveyor_schema (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now());

-- name: schema_exists
SELECT to_regclass('conveyor_schema') IS NOT NULL;

-- name: schema_version
SELECT coalesce(max(version), 0) FROM conveyor_schema;

-- name: record_migration
INSERT INTO conveyor_schema (version, name) VALUES (%s, %s);
