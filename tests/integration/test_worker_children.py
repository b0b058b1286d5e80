"""The worker loop with a task that splits into children (``ctx.spawn``) and joins their
outputs when it runs again (``ctx.spawned``): a small in-test processor, real SQLite,
real local storage, real worker threads (the worker is the subject)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from pydantic import BaseModel

from conveyor.backends.sqlite import SQLiteBackend
from conveyor.config import Settings, load_settings
from conveyor.models import OutputFile, Task, TaskStatus
from conveyor.processors import ProcessorContext
from conveyor.processors.base import Processor
from conveyor.storage.local import LocalBlobStore
from tests.integration.conftest import final_task, worker_on_sqlite


class SplitParams(BaseModel):
    parts: int = 3
    part: int | None = None
    fail_part: int | None = None


class SplitProcessor(Processor):
    kind: ClassVar[str] = "split"
    params_model: ClassVar[type[BaseModel]] = SplitParams

    def requires_input(self) -> bool:
        return False

    def run(self, ctx: ProcessorContext) -> list[OutputFile]:
        p = SplitParams.model_validate(ctx.task.params)
        if p.part is not None:  # a child: its part
            if p.part == p.fail_part:
                from conveyor.errors import InputRejected

                raise InputRejected(f"part {p.part} is broken")
            path = ctx.workdir / "part.txt"
            path.write_text(str(p.part))
            key = f"{ctx.task.parent_id}/part-{p.part}.txt"
            return [ctx.stager.put_file(f"part{p.part}", key, path)]
        if ctx.task.children == 0:  # the parent's first run: split
            ctx.spawn(
                [Task(kind="split", params={**ctx.task.params, "part": i}) for i in range(p.parts)]
            )
        text = ""  # the parent's run after its children: join their outputs
        for child in ctx.spawned():
            for o in child.outputs:
                got = ctx.workdir / f"{o.name}.txt"
                ctx.storage.get_file(o.bucket, o.key, got)
                text += got.read_text()
        path = ctx.workdir / "joined.txt"
        path.write_text(text)
        return [ctx.stager.put_file("joined", f"{ctx.task.id}/joined.txt", path)]


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("CONVEYOR_CONFIG", str(tmp_path / "none.yaml"))
    return load_settings(
        data_dir=tmp_path,
        heartbeat_interval=0.1,
        lease_seconds=2.0,
        reap_interval=0.1,
        poll_interval=0.1,
        shutdown_grace=0.5,
        retry_backoff_base=0.05,
    )


@pytest.fixture
def running(settings: Settings) -> Iterator[tuple[SQLiteBackend, LocalBlobStore]]:
    with worker_on_sqlite(
        settings, {"split": SplitProcessor(settings)}, grace=1.0, backoff_base=0.05
    ) as running:
        yield running


def _final(backend: SQLiteBackend, task_id: str) -> Task:
    return final_task(backend, task_id, timeout=20)


def test_a_parent_spawns_waits_and_joins_its_children(
    running: tuple[SQLiteBackend, LocalBlobStore], settings: Settings, tmp_path: Path
) -> None:
    backend, store = running
    parent, _ = backend.submit(Task(kind="split", params={"parts": 4}))
    done = _final(backend, parent.id)
    assert done.status == TaskStatus.COMPLETED, done.error
    assert done.children == 4
    assert [a.outcome for a in done.history] == ["spawned", "completed"]
    kids = backend.children(parent.id)
    assert [k.status for k in kids] == [TaskStatus.COMPLETED] * 4
    assert all(k.parent_id == parent.id for k in kids)
    (joined,) = done.outputs
    store.get_file(joined.bucket, joined.key, tmp_path / "j.txt")
    assert (tmp_path / "j.txt").read_text() == "0123"
    logs = [ln.line for ln in backend.read_logs(parent.id)]
    assert any("Task waiting for children" in ln for ln in logs)


def test_a_child_failed_for_good_fails_the_parent(
    running: tuple[SQLiteBackend, LocalBlobStore],
) -> None:
    backend, _ = running
    parent, _ = backend.submit(Task(kind="split", params={"parts": 3, "fail_part": 1}))
    done = _final(backend, parent.id)
    assert done.status == TaskStatus.FAILED
    assert done.error_code == "child_failed"
    assert "part 1 is broken" in (done.error or "")
