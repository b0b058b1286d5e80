"""The web console with a million tasks in the SQLite store.

    python bench/console_million.py [--rows 1000000] [--repeat 15]

Bulk-loads ``--rows`` tasks (spread over 30 days, the five statuses and three
kinds) with the loader of ``bench/list_million.py``, then renders console
pages server-side through the real app -- ``create_app`` with the embedded
engines, no worker or trigger, driven by FastAPI's TestClient -- and prints
the median time of ``--repeat`` renders after one warm-up, per page.  The
figure that matters is ``/admin/tasks?status=failed``: it must stay under
300 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from conveyor.backends.sqlite import SQLiteBackend

BUDGET_MS = 300.0


def bulk_loader() -> Callable[[SQLiteBackend, int, int, int], float]:
    """``load`` from bench/list_million.py, the bulk insert this bench shares."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from list_million import load

    return load


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--seed", type=int, default=2024)
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="conveyor-console-bench-") as tmp:
        data = Path(tmp)
        db = data / "conveyor.db"
        backend = SQLiteBackend(db)
        try:
            load_s = bulk_loader()(backend, args.rows, args.days, args.seed)
        finally:
            backend.close()
        print("Conveyor console, server-side render with many tasks: SQLite backend")
        print(f"loaded {args.rows:,} tasks in {load_s:.1f}s ({db.stat().st_size / 1e6:,.0f} MB)")

        os.environ["CONVEYOR_CONFIG"] = str(data / "none.yaml")
        from fastapi.testclient import TestClient

        from conveyor.config import load_settings
        from conveyor.server.app import create_app
        from conveyor.server.runtime import Runtime

        settings = load_settings(data_dir=data, backend_url=f"sqlite:///{db}")
        runtime = Runtime.build(settings, with_worker=False, with_trigger=False)
        with TestClient(create_app(runtime)) as client:
            some_day = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 10 * 86400))
            first = client.get("/api/tasks", params={"status": "failed", "limit": 1}).json()
            task_id = first["tasks"][0]["id"]
            cases = [
                "/admin/tasks?status=failed",
                "/admin/tasks?status=failed&limit=200",
                "/admin/tasks?status=completed&cursor=" + first_cursor(client),
                f"/admin/tasks?status=failed&date={some_day}",
                "/admin/tasks",
                "/admin/tasks?status=pending&q=video-99",
                "/admin",
                "/admin/queue",
                f"/admin/tasks/{task_id}",
            ]
            width = max(len(c) for c in cases)
            print(f"median of {args.repeat} renders after one warm-up (HTML bytes)\n")
            print(f"{'page':<{width}} | {'ms':>8} | {'max ms':>8} | bytes")
            print("-" * (width + 36))
            results: dict[str, float] = {}
            for url in cases:
                r = client.get(url)
                assert r.status_code == 200, (url, r.status_code, r.text[:300])
                samples = []
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    r = client.get(url)
                    samples.append((time.perf_counter() - t0) * 1000)
                    assert r.status_code == 200
                med = statistics.median(samples)
                results[url] = med
                shown = url if len(url) <= width else url[: width - 1] + "…"
                print(f"{shown:<{width}} | {med:>8.1f} | {max(samples):>8.1f} | {len(r.content):,}")
        key = "/admin/tasks?status=failed"
        verdict = "OK" if results[key] < BUDGET_MS else "OVER BUDGET"
        print(
            f"\n{key}: {results[key]:.1f} ms median with {args.rows:,} tasks "
            f"(budget {BUDGET_MS:.0f} ms): {verdict}"
        )
        return 0 if results[key] < BUDGET_MS else 1


def first_cursor(client: object) -> str:
    """A cursor ten pages deep into the completed tasks, to time a deep page."""
    cursor = ""
    for _ in range(10):
        params = {"status": "completed", "limit": 50, **({"cursor": cursor} if cursor else {})}
        cursor = client.get("/api/tasks", params=params).json()["next_cursor"]  # type: ignore[attr-defined]
    return cursor


if __name__ == "__main__":
    raise SystemExit(main())
