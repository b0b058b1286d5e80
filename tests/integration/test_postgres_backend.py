"""What the PostgreSQL engine adds beyond the backend contract.

Schema migrations and the start-up check, ``conveyor db`` (upgrade/status),
LISTEN/NOTIFY wake-ups, and several backend instances (as on several hosts)
claiming and reaping the same queue at once.  The contract itself runs in
``tests/contract`` against the same throwaway cluster (``tests/pgserver.py``).
"""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg.types.json import Jsonb
from typer.testing import CliRunner

from conveyor.backends import open_backend
from conveyor.backends.postgres import (
    PostgresBackend,
    SchemaMismatch,
    latest_version,
    migrations,
    schema_status,
    upgrade,
)
from conveyor.backends.postgres.engine import REAPER_LOCK, _claim_sql
from conveyor.cli.db import db_app
from conveyor.errors import InvalidRequest
from conveyor.models import Task, TaskStatus, WorkerInfo
from tests import pgserver

pg_url = pgserver.pg_url
pg_empty_url = pgserver.pg_empty_url

LONG_LEASE_S = 60.0


@pytest.fixture
def opened() -> Iterator[Callable[..., PostgresBackend]]:
    """Open backends that are closed at the end of the test."""
    handles: list[PostgresBackend] = []

    def open_(url: str, **kwargs: object) -> PostgresBackend:
        b = PostgresBackend(url, **kwargs)  # type: ignore[arg-type]
        handles.append(b)
        return b

    yield open_
    for b in reversed(handles):
        b.close()


def kind() -> str:
    return f"k{uuid.uuid4().hex[:10]}"


def run_threads(n: int, target: Callable[[int], None], timeout: float = 60.0) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def body(i: int) -> None:
        try:
            barrier.wait()
            target(i)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
        assert not t.is_alive(), "thread hung"
    if errors:
        raise errors[0]


def start_waiter(b: PostgresBackend, timeout: float, woke: list[float]) -> threading.Thread:
    """A thread blocked in ``b.wait_for_work(timeout)`` that records when it returned."""

    def wait() -> None:
        b.wait_for_work(timeout)
        woke.append(time.perf_counter())

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    return thread


def sql(url: str, query: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


# -- migrations ------------------------------------------------------------------------
def test_upgrade_creates_the_schema_and_a_second_upgrade_is_a_no_op(pg_empty_url: str) -> None:
    before = schema_status(pg_empty_url)
    assert (before.current, before.latest) == (0, latest_version())
    assert [m.version for m in before.pending] == [m.version for m in migrations()]

    applied = upgrade(pg_empty_url)
    assert [m.version for m in applied] == list(range(1, latest_version() + 1))
    assert upgrade(pg_empty_url) == []
    after = schema_status(pg_empty_url)
    assert after.up_to_date and after.pending == []
    rows = sql(pg_empty_url, "SELECT version FROM conveyor_schema ORDER BY version")
    assert [r[0] for r in rows] == list(range(1, latest_version() + 1))


def test_concurrent_upgrades_apply_each_migration_once(pg_empty_url: str) -> None:
    applied: list[int] = []
    lock = threading.Lock()

    def run(_: int) -> None:
        done = upgrade(pg_empty_url)
        with lock:
            applied.extend(m.version for m in done)

    run_threads(4, run)
    assert sorted(applied) == list(range(1, latest_version() + 1))


def test_the_schema_has_partial_indexes_for_pending_work_and_leases(pg_url: str) -> None:
    defs = dict(sql(pg_url, "SELECT indexname, indexdef FROM pg_indexes WHERE tablename='tasks'"))
    assert "WHERE (status = 'pending'::text)" in str(defs["tasks_ready"])
    assert "(kind, priority DESC, id, gpus)" in str(defs["tasks_ready"])
    assert "WHERE (status = 'processing'::text)" in str(defs["tasks_leases"])


def test_backend_refuses_an_empty_database_without_auto_upgrade(
    pg_empty_url: str, opened: Callable[..., PostgresBackend]
) -> None:
    with pytest.raises(SchemaMismatch, match="run `conveyor db upgrade"):
        PostgresBackend(pg_empty_url)
    with pytest.raises(SchemaMismatch, match="no Conveyor schema"):
        open_backend(pg_empty_url)
    # auto_upgrade (embedded mode, test fixtures) applies the migrations instead
    b = opened(pg_empty_url, auto_upgrade=True)
    assert schema_status(pg_empty_url).up_to_date
    task, created = b.submit(Task(kind=kind()))
    assert created and b.get(task.id) is not None


def test_backend_url_auto_upgrade_option(pg_empty_url: str) -> None:
    b = open_backend(pg_empty_url + "?auto_upgrade=1&pool_max=3&prepare_threshold=none")
    try:
        assert isinstance(b, PostgresBackend)
        assert schema_status(pg_empty_url).up_to_date
        for _ in range(8):  # past psycopg's default prepare threshold
            b.ping()
            b.counts()
    finally:
        b.close()
    with pytest.raises(InvalidRequest, match="invalid option"):
        open_backend(pg_empty_url + "?pool_max=lots")


def test_backend_refuses_a_schema_newer_than_it_knows(pg_url: str) -> None:
    newer = latest_version() + 1
    sql(pg_url, f"INSERT INTO conveyor_schema (version, name) VALUES ({newer}, 'from_the_future')")
    message = (
        f"database schema is at version {newer} but this Conveyor knows up to version "
        f"{latest_version()}: upgrade Conveyor"
    )
    for attempt in (
        lambda: PostgresBackend(pg_url),
        lambda: PostgresBackend(pg_url, auto_upgrade=True),
        lambda: upgrade(pg_url),
    ):
        with pytest.raises(SchemaMismatch) as info:
            attempt()
        assert str(info.value) == message
        assert info.value.code == "schema_mismatch"


def test_a_claim_reads_only_the_top_of_its_kinds_however_long_other_queues_are(
    pg_url: str, opened: Callable[..., PostgresBackend]
) -> None:
    b = opened(pg_url)
    sql(
        pg_url,
        "INSERT INTO tasks (id, kind, status, priority, created_at, updated_at, date_partition) "
        "SELECT lpad(i::text, 26, '0'), 'gpu-only', 'pending', 9, now(), now(), '2024-01-01' "
        "FROM generate_series(1, 20000) AS i",
    )
    sql(pg_url, "ANALYZE tasks")
    mine = [b.submit(Task(kind=k))[0] for k in ("cpu", "ocr")]
    with psycopg.connect(pg_url) as conn:
        plan = "\n".join(
            str(r[0])
            for r in conn.execute(
                "EXPLAIN (ANALYZE, COSTS OFF) " + _claim_sql(2),  # type: ignore[operator]
                {
                    "kind0": "cpu",
                    "kind1": "ocr",
                    "capacity": 2,
                    "worker": "w",
                    "lease_s": 60.0,
                    "progress": Jsonb({}),
                },
            ).fetchall()
        )
        conn.rollback()
    assert "Index Scan using tasks_ready" in plan, plan
    assert "Rows Removed by Filter" not in plan, plan
    got = b.claim("w", ["cpu", "ocr", "cpu"], 5, LONG_LEASE_S)  # duplicates are harmless
    assert sorted(c.task.id for c in got) == sorted(t.id for t in mine)


def test_a_version_1_database_upgrades_with_gpus_backfilled_from_container_params(
    pg_empty_url: str, opened: Callable[..., PostgresBackend]
) -> None:
    first = migrations()[0]
    with psycopg.connect(pg_empty_url, autocommit=True) as conn, conn.transaction():
        conn.execute(
            "CREATE TABLE conveyor_schema (version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute(first.sql)  # type: ignore[call-overload]
        conn.execute("INSERT INTO conveyor_schema (version, name) VALUES (1, %s)", (first.name,))
        for task_id, k, params in (
            ("01a", "container", {"command": ["true"], "gpus": 2}),
            ("01b", "container", {"command": ["true"], "gpus": ["0", "1", "3"]}),
            ("01c", "container", {"command": ["true"]}),
            ("01d", "transcode", {"gpus": 5}),
        ):
            conn.execute(
                "INSERT INTO tasks (id, kind, status, params, created_at, updated_at,"
                " date_partition) VALUES (%s, %s, 'pending', %s, now(), now(), '2026-12-06')",
                (task_id, k, Jsonb(params)),
            )
    assert schema_status(pg_empty_url).current == 1
    assert [m.version for m in upgrade(pg_empty_url)] == list(range(2, latest_version() + 1))
    b = opened(pg_empty_url)
    gpus = {t: b.get(t).gpus for t in ("01a", "01b", "01c", "01d")}  # type: ignore[union-attr]
    assert gpus == {"01a": 2, "01b": 3, "01c": 0, "01d": 0}
    got = b.claim("w", ["container", "transcode"], 10, LONG_LEASE_S, max_gpus=2)
    assert sorted(c.task.id for c in got) == ["01a", "01c", "01d"]


def test_a_gpu_limited_claim_skips_big_tasks_inside_the_index(
    pg_url: str, opened: Callable[..., PostgresBackend]
) -> None:
    b = opened(pg_url)
    sql(
        pg_url,
        "INSERT INTO tasks (id, kind, status, priority, gpus, created_at, updated_at,"
        " date_partition) SELECT lpad(i::text, 26, '0'), 'container', 'pending', 9, 4, now(),"
        " now(), '2024-01-01' FROM generate_series(1, 20000) AS i",
    )
    sql(pg_url, "ANALYZE tasks")
    small = b.submit(Task(kind="container", gpus=1))[0]
    with psycopg.connect(pg_url) as conn:
        plan = "\n".join(
            str(r[0])
            for r in conn.execute(
                "EXPLAIN (ANALYZE, COSTS OFF) " + _claim_sql(1, True),  # type: ignore[operator]
                {
                    "kind0": "container",
                    "max_gpus": 1,
                    "capacity": 1,
                    "worker": "w",
                    "lease_s": 60.0,
                    "progress": Jsonb({}),
                },
            ).fetchall()
        )
        conn.rollback()
    # 20000 tasks needing 4 GPUs come first in claim order: passed over on the
    # index entries (an index condition), not fetched and filtered
    assert "Index Scan using tasks_ready" in plan, plan
    assert "gpus <= " in plan and "Rows Removed by Filter" not in plan, plan
    got = b.claim("w", ["container"], 1, LONG_LEASE_S, max_gpus=1)
    assert [c.task.id for c in got] == [small.id]


def test_a_claim_for_many_kinds_scans_the_queue_in_order(
    pg_url: str, opened: Callable[..., PostgresBackend]
) -> None:
    b = opened(pg_url)
    kinds = [kind() for _ in range(40)]
    tasks = [b.submit(Task(kind=k, priority=i % 3))[0] for i, k in enumerate(kinds)]
    got = b.claim("w", kinds, 10, LONG_LEASE_S)
    expected = sorted(tasks, key=lambda t: (-t.priority, t.id))[:10]
    assert [c.task.id for c in got] == [t.id for t in expected]


# -- conveyor db ---------------------------------------------------------------------
def test_cli_db_upgrade_and_status(pg_empty_url: str) -> None:
    runner = CliRunner()
    res = runner.invoke(db_app, ["status", "--backend", pg_empty_url])
    assert res.exit_code == 3, res.output
    assert "pending: 0001_initial" in res.output

    res = runner.invoke(db_app, ["upgrade", "--backend", pg_empty_url])
    assert res.exit_code == 0, res.output
    assert "applied 0001_initial" in res.output
    assert f"now at version {latest_version()}" in res.output

    res = runner.invoke(db_app, ["upgrade"], env={"CONVEYOR_BACKEND_URL": pg_empty_url})
    assert res.exit_code == 0, res.output
    assert "nothing to do" in res.output

    res = runner.invoke(db_app, ["status", "--backend", pg_empty_url])
    assert res.exit_code == 0, res.output
    assert "up to date" in res.output
    PostgresBackend(pg_empty_url).close()  # the worker's start-up check passes now


def test_cli_db_status_of_a_newer_database_and_errors(pg_url: str) -> None:
    runner = CliRunner()
    sql(pg_url, "INSERT INTO conveyor_schema (version, name) VALUES (999, 'future')")
    res = runner.invoke(db_app, ["status", "--backend", pg_url])
    assert res.exit_code == 4, res.output
    res = runner.invoke(db_app, ["upgrade", "--backend", pg_url])
    assert res.exit_code == 1
    assert "upgrade Conveyor" in res.output

    res = runner.invoke(db_app, ["upgrade", "--backend", "mysql://x:secret@h/db"])
    assert res.exit_code == 1
    assert "secret" not in res.output
    res = runner.invoke(db_app, ["upgrade"], env={"CONVEYOR_BACKEND_URL": ""})
    assert res.exit_code != 0
    unreachable = "postgresql://conveyor:hunter2@127.0.0.1:1/nowhere?connect_timeout=2"
    res = runner.invoke(db_app, ["status", "--backend", unreachable])
    assert res.exit_code == 1
    assert "hunter2" not in res.output


# -- LISTEN/NOTIFY -----------------------------------------------------------------------
def test_an_idle_worker_wakes_within_milliseconds_of_a_submit_on_another_host(
    pg_url: str, opened: Callable[..., PostgresBackend]
) -> None:
    worker_side, api_side = opened(pg_url), opened(pg_url)
    worker_side.wait_for_work(0.01)  # opens the LISTEN connection, as the worker's first idle poll
    latencies: list[float] = []
    for _ in range(7):
        woke: list[float] = []
        thread = start_waiter(worker_side, 5.0, woke)
        time.sleep(0.15)  # let it block
        submitted = time.perf_counter()
        api_side.submit(Task(kind=kind()))
        thread.join(6.0)
        assert woke, "wait_for_work did not return"
        latencies.append(woke[0] - submitted)
    assert statistics.median(latencies) < 0.1, latencies
    assert max(latencies) < 0.5, latencies


def test_wait_for_work_times_out_and_survives_a_broken_listen_connection(
    pg_url: str, opened: Callable[..., PostgresBackend]
) -> None:
    b, other = opened(pg_url), opened(pg_url)
    start = time.perf_counter()
    b.wait_for_work(0.3)
    assert 0.25 <= time.perf_counter() - start < 2.0

    # the server kills the listener (restart, idle timeout, failover...): no exception,
    # the caller just polls, and the next call listens again
    sql(
        pg_url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE query ILIKE 'LISTEN%' AND datname = current_database()",
    )
    b.wait_for_work(0.5)
    b.wait_for_work(0.01)
    woke: list[float] = []
    thread = start_waiter(b, 5.0, woke)
    time.sleep(0.15)
    submitted = time.perf_counter()
    other.submit(Task(kind=kind()))
    thread.join(6.0)
    assert woke and woke[0] - submitted < 0.5


def test_waiters_in_several_threads_all_wake(
    pg_url: str, opened: Callable[..., PostgresBackend]
) -> None:
    b, other = opened(pg_url), opened(pg_url)
    b.wait_for_work(0.01)
    woke: list[float] = []
    threads = [start_waiter(b, 5.0, woke) for _ in range(3)]
    time.sleep(0.2)
    submitted = time.perf_counter()
    other.submit(Task(kind=kind()))
    for t in threads:
        t.join(6.0)
    assert len(woke) == 3
    assert max(woke) - submitted < 0.5


# -- several hosts ----------------------------------------------------------------------
def test_two_hosts_claiming_concurrently_get_each_task_exactly_once(
    pg_url: str, opened: Callable[..., PostgresBackend]
) -> None:
    hosts = [opened(pg_url, pool_max=4), opened(pg_url, pool_max=4)]
    k = kind()
    ids = [hosts[0].submit(Task(kind=k, priority=i % 3))[0].id for i in range(300)]
    claimed: list[list[str]] = [[] for _ in range(8)]

    def worker(i: int) -> None:
        host = hosts[i % 2]
        n = 0
        while got := host.claim(f"h{i % 2}-w{i}", [k], 1 + n % 4, LONG_LEASE_S):
            n += 1
            for c in got:
                claimed[i].append(c.task.id)
                host.complete(c.lease, [])

    run_threads(8, worker)
    counts = Counter(t for per in claimed for t in per)
    assert [t for t, n in counts.items() if n > 1] == []
    assert sorted(counts) == sorted(ids)
    c = hosts[1].counts()
    assert (c.pending, c.processing, c.completed_today) == (0, 0, 300)


def test_concurrent_reapers_on_two_hosts_count_each_attempt_once(
    pg_url: str, opened: Callable[..., PostgresBackend]
) -> None:
    hosts = [opened(pg_url, backoff_base=0.05), opened(pg_url, backoff_base=0.05)]
    k = kind()
    for _ in range(40):
        hosts[0].submit(Task(kind=k, max_attempts=3))
    claims = hosts[0].claim("w-dead", [k], 40, 0.2)
    assert len(claims) == 40
    time.sleep(0.35)
    touched = [0] * 6

    def reaper(i: int) -> None:
        for _ in range(5):
            touched[i] += hosts[i % 2].reap()

    run_threads(6, reaper)
    assert sum(touched) == 40
    for c in claims:
        t = hosts[1].get(c.task.id)
        assert t is not None
        assert t.status == TaskStatus.PENDING
        assert t.attempts == 1
        assert [h.outcome for h in t.history] == ["lease_expired"]


def test_reap_does_not_wait_for_a_reaper_on_another_host(
    pg_url: str, opened: Callable[..., PostgresBackend]
) -> None:
    b = opened(pg_url)
    k = kind()
    b.submit(Task(kind=k))
    b.claim("w-dead", [k], 1, 0.05)
    time.sleep(0.1)
    with psycopg.connect(pg_url) as other_host:  # holds the reaper lock in an open transaction
        other_host.execute("SELECT pg_advisory_xact_lock(%s)", (REAPER_LOCK,))
        start = time.perf_counter()
        assert b.reap() == 0
        assert time.perf_counter() - start < 1.0
    assert b.reap() == 1


def test_heartbeat_renews_leases_and_records_the_worker_in_one_statement(
    pg_url: str, opened: Callable[..., PostgresBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    b = opened(pg_url)
    k = kind()
    for _ in range(5):
        b.submit(Task(kind=k))
    claims = b.claim("w1", [k], 5, 1.0)
    statements: list[str] = []
    original = psycopg.Cursor.execute

    def counting(
        self: psycopg.Cursor[object], query: object, *args: object, **kw: object
    ) -> object:
        statements.append(str(query))
        return original(self, query, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(psycopg.Cursor, "execute", counting)
    hb = b.heartbeat(WorkerInfo(id="w1"), [c.lease for c in claims], LONG_LEASE_S)
    monkeypatch.undo()
    # one statement besides the pool's empty liveness check of the connection it hands out
    assert [q for q in statements if q.strip()] == [statements[-1]]
    assert sorted(hb.renewed) == sorted(c.task.id for c in claims)
    assert [w.id for w in b.workers()] == ["w1"]
