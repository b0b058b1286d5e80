"""Events out (issue 19, show-point 4): what the outbox costs the queue, and how soon an
event reaches a receiver.

    python bench/events.py [--tasks 2000] [--workers 2] [--rounds 3] [--rate 100]
                           [--batch 1] [--engines sqlite,postgresql] [--pg-url postgresql://...]

For each engine (SQLite on a fresh temporary file; PostgreSQL on a fresh database of
``--pg-url`` / ``CONVEYOR_BENCH_PG_URL``, else a throwaway local cluster, as
bench/queue_throughput.py):

* drain rate, outbox on vs off: ``--tasks`` no-op tasks submitted, then ``--workers``
  threads loop ``claim()`` + ``complete()`` until the queue is empty (the drain of
  bench/queue_throughput.py); with ``--batch N`` each claim takes up to N tasks and
  completes them in one ``complete_many()``, as the worker does.  "Off" is the
  same database with the outbox triggers dropped (what the queue did before events);
  "on" writes queued / started / completed rows in the same transactions.  Rounds
  alternate off and on; the medians are compared, and so is the median of each
  round's on/off ratio (the two runs of a round are back to back, so a shared
  machine's load drifts less between them).  Goal: on is at most 10 % slower.
* delivery latency: outbox on, a dispatcher (``conveyor.events.dispatcher``) and a
  subscription to a receiver on 127.0.0.1 (a process of its own); a producer submits
  ``--tasks`` tasks at ``--rate`` per second while the workers complete them;
  latency = the receiver's clock when a POST arrives minus the event's timestamp (the
  state change's time, set in its transaction), over every event (3 per task); p50,
  p95, max.

The machine's load (``uptime``) is printed with the figures: the runs are noisy on a
shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.queue_throughput import PgServer, bench_drain, percentile, sqlite_store
from tests.conftest import free_port

from conveyor.backends.base import Backend
from conveyor.backends.events_base import open_event_store
from conveyor.events import signing
from conveyor.events.dispatcher import Dispatcher
from conveyor.events.model import Endpoint, new_endpoint_id
from conveyor.events.settings import EventSettings
from conveyor.models import Task

KIND = "noop"
LEASE_S = 300.0


def outbox_off(backend: Backend) -> None:
    """Drop the outbox triggers: the queue as it was before events."""
    from conveyor.backends.postgres import PostgresBackend
    from conveyor.backends.sqlite import SQLiteBackend

    if isinstance(backend, SQLiteBackend):
        import sqlite3

        conn = sqlite3.connect(backend.path, isolation_level=None)
        conn.execute("DROP TRIGGER tasks_event_insert")
        conn.execute("DROP TRIGGER tasks_event_update")
        conn.close()
    elif isinstance(backend, PostgresBackend):
        import psycopg

        with psycopg.connect(backend.conninfo, autocommit=True) as conn:
            conn.execute("DROP TRIGGER tasks_events_insert ON tasks")  # 0008's
            conn.execute("DROP TRIGGER tasks_events_update ON tasks")


def trigger_cost_us(database: Any, rows: int = 1000, repeats: int = 5) -> tuple[float, float]:
    """The outbox's own cost per state change, in µs, with and without it: ``rows``
    pending tasks made processing in one statement (one transaction: no commit, no
    round trips, little load noise), best of ``repeats``, each on a fresh database."""
    from conveyor.backends.postgres import PostgresBackend
    from conveyor.backends.sqlite import SQLiteBackend

    sql = (
        "UPDATE tasks SET status = 'processing', attempts = attempts + 1, worker_id = 'w' "
        "WHERE status = 'pending'"
    )
    best: dict[str, float] = {}
    for mode in ("on", "off") * repeats:
        with database() as opener:
            backend: Backend = opener()
            backend.submit_many([Task(kind=KIND) for _ in range(rows)])
            if mode == "off":
                outbox_off(backend)
            if isinstance(backend, SQLiteBackend):
                import sqlite3

                conn = sqlite3.connect(backend.path, isolation_level=None)
                conn.execute("BEGIN IMMEDIATE")
                start = time.perf_counter()
                conn.execute(sql)
                took = time.perf_counter() - start
                conn.execute("ROLLBACK")
                conn.close()
            elif isinstance(backend, PostgresBackend):
                import psycopg

                with psycopg.connect(backend.conninfo, autocommit=True) as pg:
                    row = pg.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql).fetchone()
                    assert row is not None
                    took = float(row[0][0]["Execution Time"]) / 1000
            else:  # pragma: no cover
                raise SystemExit(f"no trigger measurement for {type(backend).__name__}")
        best[mode] = min(best.get(mode, took), took)
    return best["on"] / rows * 1e6, best["off"] / rows * 1e6


def drain(backend: Backend, n: int, workers: int, batch: int) -> float:
    """``n`` no-op tasks submitted, then drained as bench/queue_throughput.py does; with
    ``batch`` > 1 each claim takes up to ``batch`` and completes them in one call."""
    for i in range(0, n, 500):
        backend.submit_many([Task(kind=KIND) for _ in range(min(500, n - i))])
    return bench_drain(backend, n, workers, batch, many=batch > 1)


class ReceiverProcess:
    """The receiver in a process of its own (its own interpreter lock), logging arrivals."""

    def __init__(self, tmp: Path) -> None:
        self.log = tmp / "arrivals.tsv"
        self.log.write_text("")
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/hook"
        root = Path(__file__).resolve().parent.parent
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.webhook_receiver", str(port), str(self.log)],
            cwd=root,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(root), *sys.path])},
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("the receiver did not start") from None
                time.sleep(0.05)

    def arrivals(self) -> list[tuple[float, dict[str, Any]]]:
        out = []
        for line in self.log.read_text(encoding="utf-8").splitlines():
            at, _, body = line.partition("\t")
            if body:
                out.append((float(at), json.loads(body)))
        return out

    def count(self) -> int:
        return self.log.read_text(encoding="utf-8").count("\n")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def latency(backend: Backend, n: int, workers: int, rate: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-rx-") as tmp:
        receiver = ReceiverProcess(Path(tmp))
        try:
            return _latency(backend, n, workers, rate, receiver)
        finally:
            receiver.stop()


def _latency(
    backend: Backend, n: int, workers: int, rate: float, receiver: ReceiverProcess
) -> dict[str, Any]:
    store = open_event_store(backend)
    settings = EventSettings(allow_cidrs="127.0.0.1/32", poll_s=0.05, concurrency=16)
    endpoint = Endpoint(
        id=new_endpoint_id(),
        url=receiver.url,
        secret=signing.new_secret(),
        created_at=datetime.now().astimezone(),
    )
    store.add_endpoint(endpoint)
    dispatcher = Dispatcher(store, settings)
    dispatcher.start()
    stop = threading.Event()

    def worker(i: int) -> None:
        while not stop.is_set():
            claimed = backend.claim(f"w{i}", [KIND], 1, LEASE_S)
            if not claimed:
                backend.wait_for_work(0.05)
                continue
            for c in claimed:
                backend.complete(c.lease, [])

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(workers)]
    for t in threads:
        t.start()
    start = time.perf_counter()
    for i in range(n):
        due = start + i / rate
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        backend.submit(Task(kind=KIND))
    submitted = time.perf_counter() - start
    deadline = time.monotonic() + 120
    while receiver.count() < 3 * n:
        if time.monotonic() > deadline:
            raise SystemExit(f"latency: {receiver.count()} of {3 * n} events received")
        time.sleep(0.05)
    total = time.perf_counter() - start
    stop.set()
    for t in threads:
        t.join()
    dispatcher.stop()
    store.close()
    lat: list[float] = []
    by_type: dict[str, list[float]] = {}
    for arrived, body in receiver.arrivals():
        at = datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00")).timestamp()
        ms = (arrived - at) * 1000
        lat.append(ms)
        by_type.setdefault(body["type"], []).append(ms)
    return {
        "events": len(lat),
        "submitted_s": submitted,
        "total_s": total,
        "p50": percentile(lat, 50),
        "p95": percentile(lat, 95),
        "max": max(lat),
        "by_type": {k: (percentile(v, 50), percentile(v, 95)) for k, v in by_type.items()},
    }


@contextmanager
def engines(names: list[str], pg_url: str | None) -> Iterator[list[tuple[str, Any]]]:
    out: list[tuple[str, Any]] = []
    pg: PgServer | None = None
    for name in names:
        if name == "sqlite":
            out.append(("sqlite (WAL, one file)", sqlite_store))
        elif name in ("postgres", "postgresql"):
            pg = PgServer(pg_url)
            out.append((pg.describe(), pg.database))
        else:
            raise SystemExit(f"unknown engine {name}")
    try:
        yield out
    finally:
        if pg is not None and pg.local:
            pg.stop()


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--batch",
        type=int,
        default=1,
        help="tasks per claim in the drain; above 1 they are completed in one "
        "complete_many call, as the worker's completer does (1: one call a task)",
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=float, default=50.0, help="tasks/s for the latency run")
    ap.add_argument("--engines", default="sqlite,postgresql")
    ap.add_argument("--pg-url", default=os.environ.get("CONVEYOR_BENCH_PG_URL"))
    ap.add_argument("--skip-latency", action="store_true")
    args = ap.parse_args(argv)
    print(
        f"bench/events.py: {args.tasks} tasks, {args.workers} worker threads, {args.rounds} "
        f"rounds, claims of {args.batch}"
        + (" completed by complete_many" if args.batch > 1 else " completed one call a task")
    )
    print(f"load before: {uptime()}")
    with engines(args.engines.split(","), args.pg_url) as chosen:
        for label, database in chosen:
            print(f"\n== {label}")
            rates: dict[str, list[float]] = {"off": [], "on": []}
            for r in range(args.rounds):
                for mode in ("off", "on") if r % 2 == 0 else ("on", "off"):
                    with database() as opener:
                        backend: Backend = opener()
                        if mode == "off":
                            outbox_off(backend)
                        rate = drain(backend, args.tasks, args.workers, args.batch)
                        rates[mode].append(rate)
                        print(f"  round {r + 1} outbox {mode:<3}: drain {rate:8.0f} tasks/s")
            on_us, off_us = trigger_cost_us(database)
            per_task_us = 1e6 / statistics.median(rates["off"])
            share = 2 * (on_us - off_us) / per_task_us * 100
            print(
                f"  a state change in one statement: {off_us:.1f} µs without the outbox, "
                f"{on_us:.1f} µs with it: +{on_us - off_us:.1f} µs per event; a drained task "
                f"(2 events) takes {per_task_us:.0f} µs here, so the outbox is "
                f"{share:.1f} % of it"
            )
            off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
            slower = (off - on) / off * 100
            paired = statistics.median(
                a / b for a, b in zip(rates["on"], rates["off"], strict=True)
            )
            print(
                f"  drain median: outbox off {off:.0f} tasks/s, on {on:.0f} tasks/s: "
                f"on/off = {on / off:.3f} ({slower:+.1f} % slower; goal <= 10 %); "
                f"median of the rounds' on/off = {paired:.3f}"
            )
            if args.skip_latency:
                continue
            with database() as opener:
                res = latency(opener(), args.tasks, args.workers, args.rate)
            print(
                f"  delivery latency over {res['events']} events ({args.tasks} tasks at "
                f"{args.rate:g}/s, submitted in {res['submitted_s']:.1f} s, all received "
                f"{res['total_s']:.1f} s after the first): p50 {res['p50']:.1f} ms, "
                f"p95 {res['p95']:.1f} ms, max {res['max']:.1f} ms"
            )
            for kind, (p50, p95) in sorted(res["by_type"].items()):
                print(f"    {kind:<9} p50 {p50:7.1f} ms  p95 {p95:7.1f} ms")
    print(f"\nload after: {uptime()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
