"""What the SQLite engine adds beyond the backend contract: schema upgrades and query plans.

The contract (``tests/contract``) runs against a fresh database; these tests
start from a file that an older Conveyor wrote and check that opening it
brings it to the current schema with its data intact.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from conveyor.backends.sqlite import SCHEMA_VERSION, SQLiteBackend

# The schema as Conveyor wrote it at version 1 (before tasks had a gpus column).
SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    input_bucket TEXT,
    input_key TEXT,
    params TEXT NOT NULL DEFAULT '{}',
    outputs TEXT NOT NULL DEFAULT '[]',
    progress TEXT NOT NULL DEFAULT '{}',
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL DEFAULT 3,
    error TEXT,
    error_code TEXT,
    worker_id TEXT,
    lease_token TEXT,
    lease_expires REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    not_before REAL,
    date_partition TEXT NOT NULL,
    idempotency_key TEXT UNIQUE,
    submitted_by TEXT,
    trigger TEXT NOT NULL DEFAULT 'api',
    history TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS tasks_date ON tasks (date_partition, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS tasks_status ON tasks (status, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS tasks_date_status
    ON tasks (date_partition, status, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS tasks_created ON tasks (created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS tasks_finished ON tasks (status, finished_at);
CREATE INDEX IF NOT EXISTS tasks_kind ON tasks (kind, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS tasks_ready ON tasks (priority DESC, id, not_before, kind)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS tasks_leases ON tasks (lease_expires)
    WHERE status = 'processing';
CREATE TABLE IF NOT EXISTS task_logs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    ts REAL NOT NULL,
    stream TEXT NOT NULL,
    line TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS task_logs_task ON task_logs (task_id, attempt, seq);
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    info TEXT NOT NULL,
    last_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def _v1_database(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA_V1)
    conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '1')")
    now = time.time()
    rows = [
        ("01a", "container", {"command": ["true"], "gpus": 2}),
        ("01b", "container", {"command": ["true"], "gpus": ["0", "1", "3"]}),
        ("01c", "container", {"command": ["true"]}),
        ("01d", "transcode", {"transcode_types": ["thumbnail"], "gpus": 5}),
    ]
    for task_id, kind, params in rows:
        conn.execute(
            "INSERT INTO tasks (id, kind, status, params, created_at, updated_at, date_partition)"
            " VALUES (?, ?, 'pending', ?, ?, ?, '2026-12-06')",
            (task_id, kind, json.dumps(params), now, now),
        )
    conn.commit()
    conn.close()


def test_a_version_1_database_is_upgraded_on_open_with_gpus_backfilled(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _v1_database(path)
    for _ in range(2):  # the second open finds nothing left to do
        backend = SQLiteBackend(path)
        try:
            backend.check_ready()  # the schema version is the current one
            gpus = {t: backend.get(t).gpus for t in ("01a", "01b", "01c", "01d")}  # type: ignore[union-attr]
            assert gpus == {"01a": 2, "01b": 3, "01c": 0, "01d": 0}
            index = (
                backend._reader()
                .execute("SELECT sql FROM sqlite_master WHERE name = 'tasks_ready'")
                .fetchone()[0]
            )
            assert "gpus" in index and "WHERE status = 'pending'" in index
        finally:
            backend.close()
    assert SCHEMA_VERSION == "2"
    backend = SQLiteBackend(path)
    try:
        got = backend.claim("w", ["container", "transcode"], 10, 60.0, max_gpus=2)
        assert sorted(c.task.id for c in got) == ["01a", "01c", "01d"]
        assert backend.get("01b").status == "pending"  # type: ignore[union-attr]
    finally:
        backend.close()


def test_a_gpu_limited_claim_reads_the_pending_work_index_in_claim_order(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path / "plan.db")
    try:
        sql, args = backend._claim_query(["container", "transcode"], 4, 1)
        assert "gpus <= ?" in sql
        plan = " ".join(
            str(r[3]) for r in backend._reader().execute("EXPLAIN QUERY PLAN " + sql, args)
        )
        # the index is walked in (priority DESC, id) order; kind, not_before and
        # gpus are its columns, so no sort and no table read for a task passed over
        assert "USING INDEX tasks_ready" in plan, plan
        assert "TEMP B-TREE" not in plan, plan
    finally:
        backend.close()
