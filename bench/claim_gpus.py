"""A GPU-limited claim with many pending tasks that need more GPUs than are free.

    python bench/claim_gpus.py [--big 100000] [--repeat 20] [--pg-url postgresql://...]

Fills a fresh queue with ``--big`` pending container tasks needing 4 GPUs at
a high priority (first in claim order) and one task needing 1 GPU behind
them, then times, median of ``--repeat`` after a warm-up:

* ``claim(max_gpus=1)``: a worker with 1 free GPU passes over every big task
  and takes the small one (handed back with ``release`` between rounds);
* ``claim()`` without a limit, which takes the first big task: the cost of a
  claim that reads one index entry, for comparison.

SQLite always (a temporary file); PostgreSQL too with ``--pg-url`` (an empty
database that this script migrates and fills; use a throwaway one).  The
filter is checked on the pending-work index entries (``gpus`` is one of its
columns), so passing over a task costs an index entry, not a row read.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from conveyor.backends.base import Backend
from conveyor.models import Task

LEASE_S = 60.0


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def bench(name: str, backend: Backend, bulk: Callable[[int], None], big: int, repeat: int) -> None:
    t0 = time.perf_counter()
    bulk(big)
    small, _ = backend.submit(Task(kind="container", gpus=1))
    print(f"{name}: loaded {big:,} tasks needing 4 GPUs in {time.perf_counter() - t0:.1f}s")

    def limited() -> None:
        got = backend.claim("bench", ["container"], 1, LEASE_S, max_gpus=1)
        assert [c.task.id for c in got] == [small.id], got
        backend.release(got[0].lease)

    def unlimited() -> None:
        got = backend.claim("bench", ["container"], 1, LEASE_S)
        assert got and got[0].task.gpus == 4, got
        backend.release(got[0].lease)

    a, b = median_ms(limited, repeat), median_ms(unlimited, repeat)
    print(f"{name}: claim(max_gpus=1) past {big:,} big tasks: {a:.2f} ms (median of {repeat})")
    print(f"{name}: claim() of the first task:            {b:.2f} ms (median of {repeat})")
    print(f"{name}: ratio {a / b:.1f}x")


def sqlite_bulk(backend: Backend) -> Callable[[int], None]:
    from conveyor.backends.sqlite import SQLiteBackend

    assert isinstance(backend, SQLiteBackend)

    def load(n: int) -> None:
        now = time.time()
        with backend._tx() as c:
            c.executemany(
                "INSERT INTO tasks (id, kind, status, priority, gpus, created_at, updated_at,"
                " date_partition) VALUES (?, 'container', 'pending', 9, 4, ?, ?, '2026-01-01')",
                ((f"{i:026d}", now, now) for i in range(n)),
            )

    return load


def pg_bulk(url: str) -> Callable[[int], None]:
    import psycopg

    def load(n: int) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO tasks (id, kind, status, priority, gpus, created_at, updated_at,"
                " date_partition) SELECT lpad(i::text, 26, '0'), 'container', 'pending', 9, 4,"
                " now(), now(), '2026-01-01' FROM generate_series(1, %s) AS i",
                (n,),
            )
            conn.execute("ANALYZE tasks")

    return load


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--big", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--pg-url", default="")
    args = ap.parse_args(argv)

    from conveyor.backends.sqlite import SQLiteBackend

    with tempfile.TemporaryDirectory(prefix="conveyor-claim-gpus-") as tmp:
        sq = SQLiteBackend(Path(tmp) / "conveyor.db")
        try:
            bench("sqlite", sq, sqlite_bulk(sq), args.big, args.repeat)
        finally:
            sq.close()
    if args.pg_url:
        from conveyor.backends.postgres import PostgresBackend, upgrade

        upgrade(args.pg_url)
        pg = PostgresBackend(args.pg_url)
        try:
            bench("postgresql", pg, pg_bulk(args.pg_url), args.big, args.repeat)
        finally:
            pg.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
