"""What the SQLite engine adds beyond the backend contract: schema upgrades and query plans.

The contract (``tests/contract``) runs against a fresh database; these tests
start from a file that an older Conveyor wrote and check that opening it
brings it to the current schema with its data intact.
"""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import timedelta
from pathlib import Path

import pytest

from conveyor.auth.models import AuditEvent, TokenRecord
from conveyor.auth.roles import Role
from conveyor.backends.sqlite import SCHEMA_VERSION, SQLiteBackend
from conveyor.models import TaskStatus, utcnow

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
    assert int(SCHEMA_VERSION) >= 4  # upgraded past the GPUs column (later ones: 0005, ...)
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


# The schema as Conveyor wrote it at 26b0a6e (tasks with gpus, schema version 2, and the
# auth store's tables as that auth store created them: no token grants, no sessions).
SCHEMA_26B0A6E = (
    SCHEMA_V1.replace(
        "    history TEXT NOT NULL DEFAULT '[]'\n);",
        "    history TEXT NOT NULL DEFAULT '[]',\n    gpus INTEGER NOT NULL DEFAULT 0\n);",
    ).replace(
        "tasks_ready ON tasks (priority DESC, id, not_before, kind)",
        "tasks_ready ON tasks (priority DESC, id, not_before, kind, gpus)",
    )
    + """
CREATE TABLE IF NOT EXISTS auth_tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    token_hash TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked_at REAL,
    created_by TEXT,
    worker_id TEXT
);
CREATE INDEX IF NOT EXISTS auth_tokens_worker ON auth_tokens (worker_id);
CREATE TABLE IF NOT EXISTS auth_secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS auth_nonces (nonce TEXT PRIMARY KEY, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS audit_log (
    id TEXT PRIMARY KEY,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT,
    ip TEXT,
    ok INTEGER NOT NULL,
    detail TEXT
);
"""
)
# What the auth store of later versions (still schema version 2) added to those tables
# by itself when it opened such a file.
GRANTS_AND_SESSIONS = """
ALTER TABLE auth_tokens ADD COLUMN secrets TEXT NOT NULL DEFAULT '[]';
CREATE TABLE IF NOT EXISTS auth_revoked_sessions (id TEXT PRIMARY KEY, expires_at REAL NOT NULL);
"""


def _layout(path: Path) -> dict[str, list[str]]:
    """Each table's columns, in order, and each index's columns."""
    conn = sqlite3.connect(path)
    try:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type IN ('table', 'index') "
                "AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        return {
            n: [str(r[2]) for r in conn.execute(f"PRAGMA index_xinfo('{n}')")]
            or [str(r[1]) for r in conn.execute(f"PRAGMA table_info('{n}')")]
            for n in names
        }
    finally:
        conn.close()


@pytest.mark.parametrize("grants_added", [False, True], ids=["26b0a6e", "auth-store-upgraded"])
def test_a_database_an_older_conveyor_wrote_opens_and_works(
    tmp_path: Path, grants_added: bool
) -> None:
    path = tmp_path / "old.db"
    now = time.time()
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA_26B0A6E + (GRANTS_AND_SESSIONS if grants_added else ""))
    conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '2')")
    conn.execute(
        "INSERT INTO tasks (id, kind, status, params, created_at, updated_at, date_partition,"
        " gpus) VALUES ('01old', 'container', 'pending', '{\"gpus\": 1}', ?, ?, '2026-12-06', 1)",
        (now, now),
    )
    conn.execute(
        "INSERT INTO auth_tokens (id, name, role, token_hash, created_at, worker_id)"
        " VALUES ('tok1', 'ops', 'operator', 'hash', ?, NULL)",
        (now,),
    )
    conn.execute(
        "INSERT INTO audit_log (id, at, actor, role, action, ok) VALUES"
        " ('01aud', ?, 'admin', 'admin', 'token.create', 1)",
        (now,),
    )
    conn.commit()
    conn.close()

    for _ in range(2):  # the second open finds nothing left to do
        backend = SQLiteBackend(path)
        try:
            backend.check_ready()  # the schema version is the current one
            store = backend.auth_store()
            token = store.get_token("tok1")
            assert token is not None and token.role == Role.OPERATOR and token.secrets == []
            assert [e.id for e in store.list_audit().events][-1] == "01aud"
        finally:
            backend.close()

    backend = SQLiteBackend(path)
    try:
        old = backend.get("01old")
        assert old is not None and old.gpus == 1 and old.status == TaskStatus.PENDING
        got = backend.claim("w", ["container"], 5, 60.0, max_gpus=1)
        assert [c.task.id for c in got] == ["01old"]
        backend.complete(got[0].lease, [])
        assert backend.get("01old").status == TaskStatus.COMPLETED  # type: ignore[union-attr]
        store = backend.auth_store()
        store.put_token(
            TokenRecord(
                id="tok2",
                name="ci",
                role=Role.SUBMITTER,
                token_hash="h2",
                created_at=utcnow(),
                secrets=["HF_TOKEN"],
            )
        )
        assert store.get_token("tok2").secrets == ["HF_TOKEN"]  # type: ignore[union-attr]
        store.revoke_session("s1", utcnow() + timedelta(hours=1))
        assert store.session_revoked("s1")
        store.add_audit(AuditEvent(actor="admin", role="admin", action="token.create", ok=True))
    finally:
        backend.close()

    # the upgraded file has the layout a new one gets
    fresh = tmp_path / "new.db"
    SQLiteBackend(fresh).close()
    assert _layout(path) == _layout(fresh)
