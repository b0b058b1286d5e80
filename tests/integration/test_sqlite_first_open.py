"""Processes that open one new SQLite database at the same moment all get it.

Two ``conveyor worker`` processes started together on a fresh data folder (a compose
file with two workers, the peers bench) both switch the new file to WAL; SQLite answers
"database is locked" to one of them without waiting, and that worker exited at start.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROUNDS = 12
PROCESSES = 6

OPENER = """
import sys, time
from pathlib import Path
from conveyor.backends.sqlite.engine import SQLiteBackend
folder, rounds = Path(sys.argv[1]), int(sys.argv[2])
for r in range(rounds):
    while not (folder / f"go{r}").exists():
        time.sleep(0.0002)
    try:
        SQLiteBackend(folder / f"c{r}.db", synchronous="full").close()
        print("ok", flush=True)
    except Exception as exc:
        print("ERR", type(exc).__name__, exc, flush=True)
"""


def test_processes_opening_a_new_database_together_all_open_it(tmp_path: Path) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPENER, str(tmp_path), str(ROUNDS)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    time.sleep(2.0)  # every process has imported conveyor and waits for the first go
    for r in range(ROUNDS):
        (tmp_path / f"go{r}").touch()
        time.sleep(0.15)
    results = [line for p in procs for line in p.communicate(timeout=120)[0].splitlines()]
    failed = [line for line in results if line != "ok"]
    assert len(results) == ROUNDS * PROCESSES
    assert failed == [], f"{len(failed)} of {len(results)} opens failed: {failed[:3]}"
