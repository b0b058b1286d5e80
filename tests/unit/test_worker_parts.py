"""The worker's own machinery: one thread for every timeout, work folders made on demand."""

from __future__ import annotations

import threading
from pathlib import Path

from conveyor.models import Task
from conveyor.processors.base import ProcessorContext
from conveyor.storage.local import LocalBlobStore
from conveyor.worker.loop import Timeouts


def test_timeouts_fire_in_deadline_order_and_cancelled_ones_never() -> None:
    fired: list[str] = []
    done = threading.Event()
    t = Timeouts()
    try:
        t.add(0.15, lambda: fired.append("late"))
        cancelled = t.add(0.05, lambda: fired.append("cancelled"))
        t.add(0.02, lambda: fired.append("early"))
        t.add(0.2, done.set)
        t.cancel(cancelled)
        t.cancel(cancelled)  # twice is harmless
        assert done.wait(5)
        assert fired == ["early", "late"]
    finally:
        t.stop()


def test_timeouts_keep_no_more_entries_than_live_tasks() -> None:
    """A stream of short tasks with hours-long timeouts: cancelled entries are dropped."""
    t = Timeouts()
    try:
        live = [t.add(3600.0, lambda: None) for _ in range(10)]
        for _ in range(5000):
            t.cancel(t.add(3600.0, lambda: None))
        assert len(t._heap) < 200
        for e in live:
            t.cancel(e)
    finally:
        t.stop()


def _ctx(tmp_path: Path) -> ProcessorContext:
    return ProcessorContext(
        task=Task(kind="x"),
        workdir=tmp_path / "work",
        storage=LocalBlobStore(tmp_path / "blobs"),
        output_bucket="output",
        report_progress=lambda p, ph, m: None,
        log=lambda line: None,
    )


def test_the_work_folder_is_made_only_when_asked_for(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    assert not ctx.workdir_made and not (tmp_path / "work").exists()
    folder = ctx.workdir
    assert folder == tmp_path / "work" and folder.is_dir() and ctx.workdir_made
    assert folder.stat().st_mode & 0o777 == 0o700
    (folder / "f").write_text("x")
    assert ctx.workdir == folder and (folder / "f").exists()  # made once


def test_a_context_without_a_workdir_access_makes_nothing(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    assert ctx.task.kind == "x" and ctx.output_bucket == "output"
    assert not ctx.workdir_made and not (tmp_path / "work").exists()
