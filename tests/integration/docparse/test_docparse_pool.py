"""The page processes never outlive their worker, however it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.docparse_samples import make_sample_pdf

ROOT = Path(__file__).resolve().parents[3]

SCRIPT = """
import sys, threading
from pathlib import Path
from conveyor.processors.docparse.lite import run_pages
out = Path(sys.argv[2])
run_pages(Path(sys.argv[1]), list(range(12)), images_dir=out, spool=out / "spool.jsonl",
          ocr=sys.argv[3], langs=("eng",), workers=2, cancel=threading.Event(),
          on_page=lambda done, total, r: print("page", done, flush=True))
print("done", flush=True)
"""


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{p}/task/{tid}/children") as fh:
                    kids = {int(k) for k in fh.read().split()}
            except OSError:
                continue
            todo.extend(kids - found)
            found |= kids
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] != "Z":
                    alive.add(p)
        except OSError:
            pass
    return alive


def _start(pdf: Path, out: Path, ocr: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(pdf), str(out), ocr],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_page_processes_exit_with_a_killed_worker(tmp_path: Path) -> None:
    pdf = make_sample_pdf(tmp_path / "doc.pdf", repeat=4)
    proc = _start(pdf, tmp_path, "force")
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("page 1")
    children = _descendants(proc.pid)
    assert len(children) >= 2, children
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    deadline = time.monotonic() + 10
    while _alive(children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _alive(children) == set(), "page processes outlived their worker"


def test_page_processes_exit_with_a_finished_worker(tmp_path: Path) -> None:
    pdf = make_sample_pdf(tmp_path / "doc.pdf", repeat=4)
    proc = _start(pdf, tmp_path, "off")
    assert proc.stdout is not None
    lines = []
    children: set[int] = set()
    for line in proc.stdout:
        lines.append(line.strip())
        if line.startswith("page 1"):
            children = _descendants(proc.pid)
    assert proc.wait(30) == 0 and lines[-1] == "done"
    assert children
    deadline = time.monotonic() + 5
    while _alive(children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _alive(children) == set()
