"""Queue throughput of the backends: submit rate, drain rate, claim latency.

    python bench/queue_throughput.py [--tasks 5000] [--batch 1] [--engines sqlite,postgresql]
                                     [--pg-url postgresql://...]

For each engine (SQLite on a fresh temporary file, WAL; PostgreSQL on a
fresh database: ``--pg-url`` / ``CONVEYOR_BENCH_PG_URL``, else a throwaway
local cluster started with initdb + pg_ctl, fsync on and
synchronous_commit off, the counterpart of SQLite's synchronous=NORMAL),
and for 1, 2 and 4 worker threads:

* submit: one thread submits ``--tasks`` no-op tasks, one ``submit()`` each
  (the Task objects are built beforehand, so this times the backend only);
* drain: the worker threads loop ``claim(capacity=--batch)`` then
  ``complete()`` for each claimed task until the queue is empty;
* claim latency: the workers loop ``claim()``, blocking in
  ``wait_for_work(--wait-timeout)`` whenever it returns nothing, while one
  producer thread submits ``--latency-tasks`` tasks at a steady
  ``--rate``; latency = time from just before ``submit()`` to the moment a
  worker's ``claim()`` returned the task.

Then the idle-worker wake-up on PostgreSQL: one worker with nothing to do,
a producer on *another* backend instance (as another host) submits
``--idle-tasks`` tasks one at a time, each after a random pause (up to one
polling interval); latency =
submit to claim, with the worker blocked in ``wait_for_work`` (LISTEN/NOTIFY)
versus sleeping ``--poll-interval`` between claims (polling, what a worker
falls back to when a notification is missed).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from conveyor.backends.base import Backend, Completion
from conveyor.backends.sqlite import SQLiteBackend
from conveyor.models import Task

KIND = "noop"
LEASE_S = 300.0


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def bench_submit(backend: Backend, n: int) -> float:
    tasks = [Task(kind=KIND) for _ in range(n)]
    start = time.perf_counter()
    for task in tasks:
        backend.submit(task)
    return n / (time.perf_counter() - start)


def bench_drain(backend: Backend, n: int, workers: int, batch: int, *, many: bool = False) -> float:
    """Tasks/s of ``workers`` threads looping ``claim(batch)`` and completing what they
    claimed until ``n`` are done: one ``complete()`` a task, or with ``many`` one
    ``complete_many()`` for the batch, as the worker's completer does."""
    done = [0] * workers
    barrier = threading.Barrier(workers + 1)

    def worker(i: int) -> None:
        barrier.wait()
        while claimed := backend.claim(f"w{i}", [KIND], batch, LEASE_S):
            if many:
                backend.complete_many([Completion(c.lease, []) for c in claimed])
            else:
                for c in claimed:
                    backend.complete(c.lease, [])
            done[i] += len(claimed)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if sum(done) != n:
        raise SystemExit(f"drain: expected {n} tasks, workers completed {sum(done)}")
    return n / elapsed


def bench_latency(
    backend: Backend, n: int, workers: int, batch: int, rate: float, wait_timeout: float
) -> list[float]:
    submitted: dict[str, float] = {}
    latencies: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()

    def worker(i: int) -> None:
        while not stop.is_set():
            claimed = backend.claim(f"w{i}", [KIND], batch, LEASE_S)
            now = time.perf_counter()
            if not claimed:
                backend.wait_for_work(wait_timeout)
                continue
            with lock:
                latencies.extend(now - submitted[c.task.id] for c in claimed)
            for c in claimed:
                backend.complete(c.lease, [])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    time.sleep(0.2)  # let every worker reach wait_for_work
    tasks = [Task(kind=KIND) for _ in range(n)]
    interval = 1.0 / rate
    start = time.perf_counter()
    for k, task in enumerate(tasks):
        delay = start + k * interval - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        with lock:
            submitted[task.id] = time.perf_counter()
        backend.submit(task)
    deadline = time.perf_counter() + max(10.0, 3 * wait_timeout)
    while time.perf_counter() < deadline:
        with lock:
            if len(latencies) >= n:
                break
        time.sleep(0.01)
    stop.set()
    for t in threads:
        t.join()
    if len(latencies) != n:
        raise SystemExit(f"latency: {n} tasks submitted, {len(latencies)} claimed")
    return latencies


def bench_idle_latency(
    worker_side: Backend,
    producer_side: Backend,
    n: int,
    wait: Callable[[], None],
    gap_max: float,
    seed: int = 7,
) -> list[float]:
    """Submit ``n`` tasks one at a time to an idle worker; submit-to-claim latencies."""
    rng = random.Random(seed)
    latencies: list[float] = []
    submitted: dict[str, float] = {}
    lock = threading.Lock()
    idle = threading.Event()
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            claimed = worker_side.claim("idle-w", [KIND], 1, LEASE_S)
            now = time.perf_counter()
            if not claimed:
                idle.set()
                wait()
                continue
            with lock:
                latencies.extend(now - submitted[c.task.id] for c in claimed)
            for c in claimed:
                worker_side.complete(c.lease, [])

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        for _ in range(n):
            with lock:
                expected = len(latencies) + 1
            idle.clear()
            idle.wait(30)  # the worker found the queue empty and went to wait
            time.sleep(rng.uniform(0.02, gap_max))  # lands anywhere in a polling interval
            task = Task(kind=KIND)
            with lock:
                submitted[task.id] = time.perf_counter()
            producer_side.submit(task)
            deadline = time.perf_counter() + 30
            while time.perf_counter() < deadline:
                with lock:
                    if len(latencies) >= expected:
                        break
                time.sleep(0.001)
    finally:
        stop.set()
        thread.join()
    if len(latencies) != n:
        raise SystemExit(f"idle latency: {n} tasks submitted, {len(latencies)} claimed")
    return latencies


# -- engines ---------------------------------------------------------------------------
def describe_postgres(admin_url: str, where: str) -> str:
    """The server's version and durability settings, for a benchmark's header."""
    import psycopg

    with psycopg.connect(admin_url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        settings: dict[str, str] = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN "
                "('fsync', 'full_page_writes', 'synchronous_commit') ORDER BY name"
            ).fetchall()
        )
    return (
        f"PostgreSQL {row[0] if row else '?'} ({where}, 127.0.0.1 TCP, "
        + ", ".join(f"{k}={v}" for k, v in settings.items())
        + ")"
    )


class PgServer:
    """Where PostgreSQL databases for the runs come from: a given server or a throwaway one."""

    def __init__(self, url: str | None) -> None:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from tests import pgserver

        self.cluster = pgserver.PgCluster(url) if url else pgserver.start_cluster(durable=True)
        self.local = not url

    def describe(self) -> str:
        where = "throwaway local cluster" if self.local else "given server"
        return describe_postgres(self.cluster.admin_url, where)

    @contextmanager
    def database(self) -> Iterator[Callable[[], Backend]]:
        from conveyor.backends.postgres import PostgresBackend

        url = self.cluster.create_database()
        try:
            with _openers(lambda: PostgresBackend(url)) as opener:
                yield opener
        finally:
            self.cluster.drop_database(url)

    def stop(self) -> None:
        self.cluster.stop()


@contextmanager
def sqlite_store() -> Iterator[Callable[[], Backend]]:
    with (
        tempfile.TemporaryDirectory(prefix="conveyor-bench-") as tmp,
        _openers(lambda: SQLiteBackend(Path(tmp) / "queue.db")) as opener,
    ):
        yield opener


@contextmanager
def _openers(make: Callable[[], Backend]) -> Iterator[Callable[[], Backend]]:
    """An opener of handles to one database (a "host" each), all closed at the end."""
    handles: list[Backend] = []

    def opener() -> Backend:
        handles.append(make())
        return handles[-1]

    try:
        yield opener
    finally:
        for h in handles:
            h.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=5000, help="tasks per submit/drain run")
    ap.add_argument("--batch", type=int, default=1, help="claim capacity per call")
    ap.add_argument("--workers", default="1,2,4", help="worker thread counts, comma-separated")
    ap.add_argument(
        "--latency-tasks", type=int, default=1000, help="tasks submitted in the latency run"
    )
    ap.add_argument("--rate", type=float, default=500.0, help="latency run submit rate, tasks/s")
    ap.add_argument(
        "--wait-timeout", type=float, default=1.0, help="wait_for_work timeout of idle workers, s"
    )
    ap.add_argument(
        "--engines", default="sqlite,postgresql", help="engines to measure, comma-separated"
    )
    ap.add_argument(
        "--pg-url",
        default=os.environ.get("CONVEYOR_BENCH_PG_URL"),
        help="PostgreSQL server to use (a user that may CREATE DATABASE); "
        "default: a throwaway local cluster",
    )
    ap.add_argument("--idle-tasks", type=int, default=20, help="tasks in the idle-worker run")
    ap.add_argument("--poll-interval", type=float, default=1.0, help="polling interval compared, s")
    args = ap.parse_args(argv)
    worker_counts = [int(w) for w in args.workers.split(",")]
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = set(engines) - {"sqlite", "postgresql"}
    if unknown:
        raise SystemExit(f"unknown engine(s): {', '.join(sorted(unknown))}")

    pg: PgServer | None = None
    try:
        if "postgresql" in engines:
            try:
                pg = PgServer(args.pg_url)
            except (OSError, RuntimeError) as exc:
                raise SystemExit(f"cannot start PostgreSQL for the benchmark: {exc}") from exc
        print("Conveyor queue throughput")
        if "sqlite" in engines:
            print(
                f"sqlite {__import__('sqlite3').sqlite_version} "
                "(temp file, WAL, synchronous=NORMAL)"
            )
        if pg is not None:
            print(pg.describe())
        print(
            f"python {sys.version.split()[0]}; one backend instance shared by the threads.\n"
            f"submit: one thread, {args.tasks} x submit() of prebuilt no-op tasks.\n"
            f"drain:  N worker threads loop claim(capacity={args.batch}) + complete() "
            f"until {args.tasks} tasks are done.\n"
            f"claim latency: N idle workers loop claim(capacity={args.batch}), blocking in "
            f"wait_for_work({args.wait_timeout:g}s) when empty;\n"
            f"        a producer submits {args.latency_tasks} tasks at a steady {args.rate:g}/s; "
            "latency = just before submit() -> claim() returned it.\n"
        )
        header = (
            f"{'engine':<10} | {'workers':>7} | {'submit/s':>9} | {'drain/s':>9} | "
            f"{'lat p50 ms':>10} | {'p95 ms':>8} | {'p99 ms':>8} | {'max ms':>8}"
        )
        print(header)
        print("-" * len(header))
        for engine in engines:
            for workers in worker_counts:
                if engine == "sqlite":
                    store = sqlite_store()
                else:
                    assert pg is not None
                    store = pg.database()
                with store as opener:
                    backend = opener()
                    submit_rate = bench_submit(backend, args.tasks)
                    drain_rate = bench_drain(backend, args.tasks, workers, args.batch)
                    lat = bench_latency(
                        backend,
                        args.latency_tasks,
                        workers,
                        args.batch,
                        args.rate,
                        args.wait_timeout,
                    )
                ms = [x * 1000 for x in lat]
                print(
                    f"{engine:<10} | {workers:>7} | {submit_rate:>9,.0f} | {drain_rate:>9,.0f} | "
                    f"{statistics.median(ms):>10.2f} | {percentile(ms, 95):>8.2f} | "
                    f"{percentile(ms, 99):>8.2f} | {max(ms):>8.1f}",
                    flush=True,
                )

        if pg is not None:
            print(
                f"\nIdle-worker wake-up, PostgreSQL: {args.idle_tasks} tasks, one at a time, "
                "submitted through another backend instance (another host) to one idle worker."
            )
            header = f"{'wake-up':<28} | {'p50 ms':>8} | {'p95 ms':>8} | {'max ms':>8}"
            print(header)
            print("-" * len(header))
            modes: list[tuple[str, Callable[[Backend], Callable[[], None]]]] = [
                ("LISTEN/NOTIFY", lambda b: lambda: b.wait_for_work(args.poll_interval)),
                (
                    f"polling every {args.poll_interval:g}s",
                    lambda b: lambda: time.sleep(args.poll_interval),
                ),
            ]
            for label, make_wait in modes:
                with pg.database() as opener:
                    worker_side, producer_side = opener(), opener()
                    lat = bench_idle_latency(
                        worker_side,
                        producer_side,
                        args.idle_tasks,
                        make_wait(worker_side),
                        gap_max=max(0.1, args.poll_interval),
                    )
                ms = [x * 1000 for x in lat]
                print(
                    f"{label:<28} | {statistics.median(ms):>8.2f} | "
                    f"{percentile(ms, 95):>8.2f} | {max(ms):>8.1f}",
                    flush=True,
                )
    finally:
        if pg is not None:
            pg.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
