"""The output commit protocol (conveyor.outputs) on a real SQLite engine and folder store.

What a crash between completing a task and publishing its outputs leaves behind
is finished by the sweep; what stale or failed attempts staged is removed; and
nothing staged is ever visible at a final key before the task completed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from ulid import ULID

from conveyor import outputs
from conveyor.backends.sqlite import SQLiteBackend
from conveyor.errors import InvalidRequest, LeaseLost
from conveyor.models import ClaimedTask, OutputFile, Task, TaskStatus
from conveyor.storage.local import LocalBlobStore
from tests.conftest import stored_outputs

BUCKET = "output"


@pytest.fixture
def backend(tmp_path: Path) -> SQLiteBackend:
    return SQLiteBackend(tmp_path / "conveyor.db", backoff_base=0.0)


@pytest.fixture
def store(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "buckets")


def claim(backend: SQLiteBackend, lease_s: float = 60.0) -> tuple[Task, ClaimedTask]:
    task, _ = backend.submit(Task(kind="k"))
    (c,) = backend.claim("w1", ["k"], 1, lease_s)
    return task, c


def stage(store: LocalBlobStore, tmp_path: Path, task_id: str, attempt: int) -> outputs.Stager:
    return outputs.Stager(store, BUCKET, outputs.attempt_staging(task_id, attempt))


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_nothing_is_visible_until_the_completion_then_everything_is(
    backend: SQLiteBackend, store: LocalBlobStore, tmp_path: Path
) -> None:
    task, c = claim(backend)
    st = stage(store, tmp_path, task.id, c.lease.attempt)
    outs = [
        st.put_file("a", "clips/x/a.txt", write(tmp_path, "a", b"aaa")),
        st.put_file("b", "clips/x/b.txt", write(tmp_path, "b", b"bb")),
    ]
    assert [o.key for o in store.list(BUCKET)] == [], "staged objects are not visible"
    done = backend.complete(c.lease, outs)
    assert outputs.has_staged(done)
    final = outputs.settle(backend, store, BUCKET, done)
    assert not outputs.has_staged(final)
    assert [o.key for o in store.list(BUCKET)] == ["clips/x/a.txt", "clips/x/b.txt"]
    assert stored_outputs(store) == ["clips/x/a.txt", "clips/x/b.txt"], "no staging left"
    assert backend.get(task.id) == final
    # a second settle (another mover) changes nothing
    assert outputs.commit(backend, store, done) == final


def test_the_sweep_finishes_a_commit_a_crash_interrupted(
    backend: SQLiteBackend, store: LocalBlobStore, tmp_path: Path
) -> None:
    task, c = claim(backend)
    st = stage(store, tmp_path, task.id, c.lease.attempt)
    out = st.put_file("a", "r/a.txt", write(tmp_path, "a", b"payload"))
    backend.complete(c.lease, [out])  # ... and the worker died here
    assert store.stat(BUCKET, "r/a.txt") is None
    assert outputs.sweep(backend, store, BUCKET, settle_s=3600) == (0, 0), "young: left alone"
    assert outputs.sweep(backend, store, BUCKET, settle_s=0) == (1, 0)
    with store.open(BUCKET, "r/a.txt") as fh:
        assert fh.read() == b"payload"
    got = backend.get(task.id)
    assert got is not None and not outputs.has_staged(got)
    assert stored_outputs(store) == ["r/a.txt"]


def test_the_sweep_leaves_a_just_completed_task_to_its_publisher(
    backend: SQLiteBackend, store: LocalBlobStore, tmp_path: Path
) -> None:
    """An output staged long before its task completed (a long transcode's thumbnail) is
    old enough for the sweep while the worker that completed the task publishes it:
    two movers at once could each copy it to its final key (on S3, two versions)."""
    task, c = claim(backend)
    st = stage(store, tmp_path, task.id, c.lease.attempt)
    out = st.put_file("a", "r/a.txt", write(tmp_path, "a", b"payload"))
    staged = store.local_path(BUCKET, str(out.staged_key))
    assert staged is not None
    old = time.time() - 7200
    os.utime(staged, (old, old))
    backend.complete(c.lease, [out])  # completed just now; its worker publishes next
    assert outputs.sweep(backend, store, BUCKET, settle_s=60) == (0, 0)
    assert store.stat(BUCKET, "r/a.txt") is None
    assert outputs.sweep(backend, store, BUCKET, settle_s=0) == (1, 0)  # once it has settled
    assert stored_outputs(store) == ["r/a.txt"]


def test_a_stale_attempt_s_staging_is_never_published_and_is_swept(
    backend: SQLiteBackend, store: LocalBlobStore, tmp_path: Path
) -> None:
    task, first = claim(backend, lease_s=0.05)
    stale = stage(store, tmp_path, task.id, first.lease.attempt)
    stale_out = stale.put_file("a", "r/a.txt", write(tmp_path, "old", b"attempt 1"))
    time.sleep(0.1)  # attempt 1's worker froze past its lease
    assert backend.reap() == 1
    (second,) = backend.claim("w2", ["k"], 1, 60.0)
    win = stage(store, tmp_path, task.id, second.lease.attempt)
    win_out = win.put_file("a", "r/a.txt", write(tmp_path, "new", b"attempt 2"))
    outputs.settle(backend, store, BUCKET, backend.complete(second.lease, [win_out]))
    # the stale attempt wakes up: it can neither complete nor name another's staging
    with pytest.raises(LeaseLost):
        backend.complete(first.lease, [stale_out])
    with pytest.raises(InvalidRequest):
        outputs.check_staged([stale_out], task.id, second.lease.attempt, BUCKET)
    stale.put_file("b", "r/b.txt", write(tmp_path, "late", b"late upload"))
    with store.open(BUCKET, "r/a.txt") as fh:
        assert fh.read() == b"attempt 2"
    assert [o.key for o in store.list(BUCKET)] == ["r/a.txt"]
    # settling the completion removed what attempt 1 had staged; its late upload is swept
    assert outputs.sweep(backend, store, BUCKET, settle_s=0) == (0, 1)
    assert stored_outputs(store) == ["r/a.txt"]


def test_a_failed_task_s_staging_is_removed(
    backend: SQLiteBackend, store: LocalBlobStore, tmp_path: Path
) -> None:
    task, c = claim(backend)
    st = stage(store, tmp_path, task.id, c.lease.attempt)
    st.put_file("a", "r/a.txt", write(tmp_path, "a", b"half"))
    failed = backend.fail(c.lease, "bad input", retryable=False)
    assert failed.status == TaskStatus.FAILED
    outputs.settle(backend, store, BUCKET, failed)
    assert stored_outputs(store) == []


def test_a_running_task_keeps_its_earlier_attempts_staging_for_a_day(
    backend: SQLiteBackend, store: LocalBlobStore, tmp_path: Path
) -> None:
    task, c = claim(backend)
    # attempt 1 staged a checkpoint a minute before this attempt (2) started
    earlier = str(ULID.from_timestamp(time.time() - 60)).lower()
    first = outputs.Stager(store, BUCKET, f"{outputs.task_staging(task.id)}{earlier}-1/")
    first.stage("t/ckpt.bin", write(tmp_path, "c", b"checkpoint"))
    second = stage(store, tmp_path, task.id, c.lease.attempt)
    second.stage("t/ckpt.bin", write(tmp_path, "d", b"newer checkpoint"))
    prev = second.previous_attempt()
    assert prev is not None and prev[0] == first.prefix
    assert [o.key for o in prev[1]] == [first.prefix + "t/ckpt.bin"]
    assert outputs.sweep(backend, store, BUCKET, settle_s=0) == (0, 0), "kept for a day"
    # after a day the earlier attempt's go, never what the running attempt staged
    assert outputs.sweep(backend, store, BUCKET, settle_s=0, max_age_s=0) == (0, 1)
    assert stored_outputs(store) == [second.prefix + "t/ckpt.bin"]


def test_staged_keys_of_another_task_are_refused_in_a_completion() -> None:
    out = OutputFile(
        name="a",
        bucket=BUCKET,
        key="a.txt",
        staged_key=outputs.attempt_staging("01other", 1) + "a.txt",
    )
    with pytest.raises(InvalidRequest):
        outputs.check_staged([out], "01mine", 1, BUCKET)
    with pytest.raises(InvalidRequest):
        outputs.check_staged([out], "01other", 1, "input")
    outputs.check_staged([out], "01other", 1, BUCKET)


def test_an_output_that_cannot_be_stored_holds_back_no_other(
    backend: SQLiteBackend, store: LocalBlobStore, tmp_path: Path
) -> None:
    # on a folder store a key cannot be an object and a folder: "alice/clip" is an object
    store.put_file(BUCKET, "alice/clip", write(tmp_path, "x", b"an object"))
    bad, c1 = claim(backend)
    st1 = stage(store, tmp_path, bad.id, c1.lease.attempt)
    outs = [
        st1.put_file("a", "alice/clip/a.txt", write(tmp_path, "a", b"a")),
        st1.put_file("b", "alice/b.txt", write(tmp_path, "b", b"b")),
    ]
    backend.complete(c1.lease, outs)  # ... and the worker died before publishing
    good, c2 = claim(backend)
    st2 = stage(store, tmp_path, good.id, c2.lease.attempt)
    backend.complete(c2.lease, [st2.put_file("c", "bob/c.txt", write(tmp_path, "c", b"c"))])
    assert outputs.sweep(backend, store, BUCKET, settle_s=0) == (2, 0)
    assert [o.key for o in store.list(BUCKET)] == ["alice/b.txt", "alice/clip", "bob/c.txt"]
    for t in (bad, good):
        got = backend.get(t.id)
        assert got is not None and not outputs.has_staged(got)
    # what could not be published is removed on the next pass
    assert outputs.sweep(backend, store, BUCKET, settle_s=0) == (0, 1)
    assert stored_outputs(store) == ["alice/b.txt", "alice/clip", "bob/c.txt"]


def test_missing_staged_outputs_are_found_before_a_completion(
    backend: SQLiteBackend, store: LocalBlobStore, tmp_path: Path
) -> None:
    task, c = claim(backend)
    st = stage(store, tmp_path, task.id, c.lease.attempt)
    outs = [
        st.put_file("a", "r/a.txt", write(tmp_path, "a", b"aa")),
        st.put_file("b", "r/b.txt", write(tmp_path, "b", b"bb")),
    ]
    assert st.missing(outs) == []
    store.delete(BUCKET, st.prefix + "r/b.txt")
    assert st.missing(outs) == [st.prefix + "r/b.txt"]
