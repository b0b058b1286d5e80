"""Listing and counting with a million tasks in the SQLite backend.

    python bench/list_million.py [--rows 1000000] [--days 30] [--limit 50]

Bulk-loads ``--rows`` tasks into a temporary SQLite file through the
backend's own schema (executemany on the writer connection, the same INSERT
columns as ``SQLiteBackend.submit``), spread over ``--days`` dates, the five
statuses and three kinds, then times the dashboard's reads through the
public API -- ``list()`` with each filter, paging 10 pages deep with the
cursor, and ``counts()`` -- as the median of ``--repeat`` calls after one
warm-up call, and prints ``EXPLAIN QUERY PLAN`` for the SQL the backend
actually ran.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from conveyor.backends.sql import COLUMNS as _COLUMNS
from conveyor.backends.sqlite import SQLiteBackend
from conveyor.models import Progress, TaskStatus, date_partition

# share of each status: mostly history, a live queue on top
STATUS_MIX = {
    "completed": 0.80,
    "failed": 0.06,
    "cancelled": 0.04,
    "pending": 0.08,
    "processing": 0.02,
}
COLUMN_NAMES = [c.strip() for c in _COLUMNS.split(",")]
KIND_MIX = {"transcode": 0.70, "docparse": 0.25, "container": 0.05}
CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def b32(value: int, width: int) -> str:
    out = []
    for _ in range(width):
        out.append(CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(out))


def task_id(ms: int, n: int, salt: int) -> str:
    """A ULID-shaped id: 48-bit ms time + 80 bits (a counter mixed with a salt)."""
    return b32(ms, 10) + b32((salt << 32) | n, 16)


def rows(n: int, start: float, span_s: float, seed: int) -> Iterator[tuple[Any, ...]]:
    rng = random.Random(seed)
    statuses = rng.choices(list(STATUS_MIX), weights=list(STATUS_MIX.values()), k=n)
    kinds = rng.choices(list(KIND_MIX), weights=list(KIND_MIX.values()), k=n)
    salt = rng.getrandbits(48)
    params = json.dumps({"renditions": ["1080p", "720p"], "crf": 23})
    idle = Progress().model_dump_json()
    done = Progress(percent=100.0, phase="completed").model_dump_json()
    running = Progress(percent=37.0, phase="encode 720p").model_dump_json()
    step = span_s / n
    for i in range(n):
        created = start + i * step
        status = statuses[i]
        final = status in ("completed", "failed", "cancelled")
        processing = status == "processing"
        attempts = 0 if status == "pending" else 1
        history = "[]"
        if attempts:
            history = json.dumps(
                [{"number": 1, "worker_id": "w1", "started_at": created + 1, "outcome": None}]
            )
        row = {
            "id": task_id(int(created * 1000), i, salt),
            "kind": kinds[i],
            "status": status,
            "priority": 0,
            "input_bucket": "input",
            "input_key": f"clips/{i % 997}/video-{i}.mp4",
            "params": params,
            "outputs": "[]",
            "progress": done if status == "completed" else running if processing else idle,
            "attempts": attempts,
            "max_attempts": 3,
            "error": "encoder crashed" if status == "failed" else None,
            "error_code": "failed" if status == "failed" else None,
            "worker_id": "w1" if attempts else None,
            "lease_token": f"tok{i}" if processing else None,
            "lease_expires": time.time() + 300 if processing else None,
            "cancel_requested": 0,
            "created_at": created,
            "updated_at": created + (30 if final else 0),
            "started_at": created + 1 if attempts else None,
            "finished_at": created + 30 if final else None,
            "not_before": None,
            "date_partition": date_partition(datetime.fromtimestamp(created, UTC)),
            "idempotency_key": None,
            "submitted_by": "bench",
            "trigger": "api",
            "history": history,
            "gpus": 0,
        }
        # in the engine's column order: a column the engine gained (or lost) and this
        # did not fails here, not in the INSERT
        assert len(row) == len(COLUMN_NAMES)
        yield tuple(row[name] for name in COLUMN_NAMES)


def load(backend: SQLiteBackend, n: int, days: int, seed: int) -> float:
    now = time.time()
    start = now - days * 86400
    c = backend._writer
    c.execute("PRAGMA cache_size = -262144")  # 256 MiB for the load only
    marks = ", ".join("?" * len(COLUMN_NAMES))
    sql = f"INSERT INTO tasks ({_COLUMNS}) VALUES ({marks})"
    t0 = time.perf_counter()
    chunk = 100_000
    source = rows(n, start, now - 60 - start, seed)
    with backend._write_lock:
        for _ in range(0, n, chunk):
            c.execute("BEGIN")
            batch = [r for _, r in zip(range(chunk), source, strict=False)]
            c.executemany(sql, batch)
            c.execute("COMMIT")
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.execute("PRAGMA cache_size = -2000")
    return time.perf_counter() - t0


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    result = fn()  # warm-up
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples), result


def page_through(backend: SQLiteBackend, pages: int, limit: int, **filters: Any) -> int:
    cursor: str | None = None
    seen = 0
    for _ in range(pages):
        page = backend.list(limit=limit, cursor=cursor, **filters)
        seen += len(page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    return seen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--limit", type=int, default=50, help="page size for list()")
    ap.add_argument("--repeat", type=int, default=7, help="timed calls per query (median)")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--keep", type=Path, help="write the DB here instead of a temp dir")
    args = ap.parse_args(argv)

    tmp = tempfile.TemporaryDirectory(prefix="conveyor-list-bench-")
    path = args.keep or Path(tmp.name) / "million.db"
    backend = SQLiteBackend(path)
    try:
        load_s = load(backend, args.rows, args.days, args.seed)
        reader = backend._reader()
        total = reader.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
        mix = dict(reader.execute("SELECT status, COUNT(*) FROM tasks GROUP BY status"))
        dates = [r[0] for r in reader.execute("SELECT DISTINCT date_partition FROM tasks")]
        size_mb = Path(path).stat().st_size / 1e6
        print("Conveyor list/counts with many tasks: SQLite backend")
        print(
            f"loaded {total:,} tasks in {load_s:.1f}s ({total / load_s:,.0f} rows/s), "
            f"DB {size_mb:,.0f} MB, {len(dates)} dates {dates[0]}..{dates[-1]}"
        )
        print("statuses: " + ", ".join(f"{s} {mix.get(s, 0):,}" for s in STATUS_MIX))
        print(
            f"list(limit={args.limit}); median of {args.repeat} calls after one warm-up "
            "(no ANALYZE run: the backend's INDEXED BY hints pick the plans)\n"
        )

        mid = dates[len(dates) // 2]
        today = dates[-1]
        lim = args.limit
        cases: list[tuple[str, Callable[[], object]]] = [
            ("list()", lambda: backend.list(limit=lim)),
            (f"list(date={mid})", lambda: backend.list(date=mid, limit=lim)),
            ("list(status=failed)", lambda: backend.list(status=TaskStatus.FAILED, limit=lim)),
            ("list(status=pending)", lambda: backend.list(status=TaskStatus.PENDING, limit=lim)),
            (
                f"list(date={mid}, status=failed)",
                lambda: backend.list(date=mid, status=TaskStatus.FAILED, limit=lim),
            ),
            (
                f"list(date={mid}, status=processing)",
                lambda: backend.list(date=mid, status=TaskStatus.PROCESSING, limit=lim),
            ),
            ("list(kind=container)", lambda: backend.list(kind="container", limit=lim)),
            (
                "list(status=failed, kind=container)",
                lambda: backend.list(status=TaskStatus.FAILED, kind="container", limit=lim),
            ),
            ("list(kind=<absent>)", lambda: backend.list(kind="no-such-kind", limit=lim)),
            ("10 pages, total: list()", lambda: page_through(backend, 10, lim)),
            (
                f"10 pages, total: list(date={mid})",
                lambda: page_through(backend, 10, lim, date=mid),
            ),
            (
                "10 pages, total: list(status=completed)",
                lambda: page_through(backend, 10, lim, status=TaskStatus.COMPLETED),
            ),
            (
                f"10 pages, total: list(date={mid}, status=failed)",
                lambda: page_through(backend, 10, lim, date=mid, status=TaskStatus.FAILED),
            ),
            (f"counts(today={today})", lambda: backend.counts(today=today)),
        ]
        width = max(len(name) for name, _ in cases)
        print(f"{'call':<{width}} | {'ms/call':>9} | result")
        print("-" * (width + 40))
        for name, fn in cases:
            ms, result = timed(fn, args.repeat)
            if isinstance(result, int):
                shown = f"{result} tasks"
            elif hasattr(result, "items"):
                shown = f"{len(result.items)} tasks"
            else:
                q = result
                shown = (
                    f"pending {q.pending:,} delayed {q.delayed:,} processing {q.processing:,} "  # type: ignore[attr-defined]
                    f"completed_today {q.completed_today:,} failed_today {q.failed_today:,}"  # type: ignore[attr-defined]
                )
            print(f"{name:<{width}} | {ms:>9.2f} | {shown}", flush=True)

        print("\nEXPLAIN QUERY PLAN of the SQL the backend ran")
        plans: list[tuple[str, Callable[[], object]]] = [
            ("list()", lambda: backend.list(limit=lim)),
            ("list(date)", lambda: backend.list(date=mid, limit=lim)),
            ("list(status)", lambda: backend.list(status=TaskStatus.FAILED, limit=lim)),
            (
                "list(date, status)",
                lambda: backend.list(date=mid, status=TaskStatus.FAILED, limit=lim),
            ),
            ("list(kind)", lambda: backend.list(kind="container", limit=lim)),
            (
                "list(date) page 2 (cursor)",
                lambda: backend.list(
                    date=mid, limit=lim, cursor=backend.list(date=mid, limit=lim).next_cursor
                ),
            ),
            ("counts()", lambda: backend.counts(today=today)),
        ]
        for name, fn in plans:
            statements: list[str] = []
            reader.set_trace_callback(statements.append)
            try:
                fn()
            finally:
                reader.set_trace_callback(None)
            selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
            if "cursor" in name:
                selects = selects[-1:]  # not the first-page call made to get a cursor
            for sql in selects:
                short = " ".join(sql.split())
                short = short.replace(_COLUMNS, "<columns>")
                print(f"\n[{name}] {short[:220]}")
                for row in reader.execute("EXPLAIN QUERY PLAN " + sql):
                    print(f"    {row[3]}")
    finally:
        backend.close()
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
