"""The backend contract (``conveyor.backends.base``), one test per rule.

Runs against every engine in ``conftest.BACKEND_ENGINES``.  Tests talk to
the engine only through the ``Backend`` interface, so a new engine passes
or fails them for the same reasons the SQLite engine does.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest

from conveyor.backends.base import Backend, Completion
from conveyor.backends.rules import backoff_seconds
from conveyor.errors import Conflict, InvalidRequest, LeaseLost, TaskNotFound
from conveyor.models import (
    ClaimedTask,
    InputRef,
    Lease,
    OutputFile,
    Progress,
    Task,
    TaskStatus,
    Trigger,
    WorkerInfo,
    date_partition,
    utcnow,
)

from .conftest import FAST_BACKOFF_S, BackendOpener

SHORT_LEASE_S = 0.2  # a lease that expires during the test
LONG_LEASE_S = 60.0  # a lease that does not
TOLERANCE = timedelta(milliseconds=5)

T = TypeVar("T")


# -- helpers -------------------------------------------------------------------
def unique_kind() -> str:
    """A kind no other task in the test has, so a claim can target one task."""
    return f"k{uuid.uuid4().hex[:10]}"


def make_task(**fields: Any) -> Task:
    fields.setdefault("kind", unique_kind())
    fields.setdefault("input", InputRef(bucket="input", key="clips/a.mp4"))
    return Task(**fields)


def submit(backend: Backend, **fields: Any) -> Task:
    task, created = backend.submit(make_task(**fields))
    assert created
    return task


def claim_one(
    backend: Backend, task: Task, worker_id: str = "w1", lease_s: float = LONG_LEASE_S
) -> ClaimedTask:
    """Claim ``task`` (by its unique kind) and check that it was the one leased."""
    got = backend.claim(worker_id, [task.kind], 1, lease_s)
    assert [c.task.id for c in got] == [task.id]
    return got[0]


def eventually(fn: Callable[[], T], timeout: float = 10.0, interval: float = 0.02) -> T:
    """Call ``fn`` until it returns something truthy (back-offs, slow engines)."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            assert value, f"condition not met within {timeout}s"
            return value
        time.sleep(interval)


def reclaim(
    backend: Backend, task: Task, worker_id: str, lease_s: float = LONG_LEASE_S
) -> ClaimedTask:
    """Claim ``task`` once its retry back-off has passed."""
    got = eventually(lambda: backend.claim(worker_id, [task.kind], 1, lease_s))
    assert [c.task.id for c in got] == [task.id]
    return got[0]


def expire(*claims: ClaimedTask) -> None:
    """Sleep until every given lease has expired."""
    latest = max(c.lease.expires_at for c in claims)
    time.sleep(max(0.0, (latest - utcnow()).total_seconds()) + 0.1)


def get(backend: Backend, task_id: str) -> Task:
    task = backend.get(task_id)
    assert task is not None, f"task {task_id} vanished"
    return task


def close_to(a: datetime | None, b: datetime, tol: timedelta = TOLERANCE) -> bool:
    return a is not None and abs(a - b) <= tol


def worker_ops(backend: Backend, lease: Lease) -> dict[str, Callable[[], object]]:
    """Every write a worker makes with a lease."""
    return {
        "progress": lambda: backend.progress(lease, Progress(percent=99, phase="stale")),
        "complete": lambda: backend.complete(
            lease, [OutputFile(name="stale", bucket="output", key="stale.mp4")]
        ),
        "fail": lambda: backend.fail(lease, "stale worker", retryable=False),
        "release": lambda: backend.release(lease),
    }


def assert_fenced(backend: Backend, lease: Lease, *, completed: bool = False) -> None:
    """Every worker write with ``lease`` raises LeaseLost and changes nothing; but
    when ``lease`` completed the task, repeating that very completion (its answer was
    lost with a connection) answers the completed task, unchanged."""
    before = backend.get(lease.task_id)
    for name, op in worker_ops(backend, lease).items():
        if completed and name == "complete":
            assert op() == before, "a repeated completion answers the task as it is"
        else:
            with pytest.raises(LeaseLost):
                op()
        after = backend.get(lease.task_id)
        assert after == before, f"{name}() with a stale lease changed the task"
    if completed:  # the same lease naming other outputs is no repeat: refused
        with pytest.raises(LeaseLost):
            backend.complete(lease, [OutputFile(name="other", bucket="output", key="o.mp4")])
        assert backend.get(lease.task_id) == before


def run_threads(n: int, target: Callable[[int], None], timeout: float = 30.0) -> None:
    """Run ``target(i)`` in ``n`` threads started together; re-raise their errors."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def body(i: int) -> None:
        try:
            barrier.wait()
            target(i)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
        assert not t.is_alive(), "worker thread hung"
    if errors:
        raise errors[0]


def list_all(backend: Backend, limit: int, **filters: Any) -> list[Task]:
    """Follow the cursor to the end; guard against a cursor that never ends."""
    out: list[Task] = []
    cursor: str | None = None
    for _ in range(10_000):
        page = backend.list(limit=limit, cursor=cursor, **filters)
        assert len(page.items) <= limit
        out.extend(page.items)
        if page.next_cursor is None:
            return out
        assert page.items, "a page with a next_cursor must not be empty"
        cursor = page.next_cursor
    raise AssertionError("paging did not terminate")


def newest_first(tasks: list[Task]) -> list[str]:
    return [t.id for t in sorted(tasks, key=lambda t: (t.created_at, t.id), reverse=True)]


# -- submit ----------------------------------------------------------------------
def test_submit_and_get_round_trip(backend: Backend) -> None:
    task = Task(
        kind="transcode",
        priority=7,
        gpus=3,
        input=InputRef(bucket="input", key="视频/会议 01.mp4"),
        params={"renditions": ["1080p", "720p"], "crf": 23, "nested": {"a": [1, 2.5, None]}},
        max_attempts=5,
        submitted_by="alice",
        trigger=Trigger.UPLOAD,
    )
    stored, created = backend.submit(task)
    assert created is True
    assert stored.id == task.id
    assert stored.status == TaskStatus.PENDING

    got = get(backend, task.id)
    assert got.id == task.id
    assert got.kind == "transcode"
    assert got.status == TaskStatus.PENDING
    assert got.priority == 7
    assert got.gpus == 3
    assert got.input == InputRef(bucket="input", key="视频/会议 01.mp4")
    assert got.params == task.params
    assert got.outputs == []
    assert got.attempts == 0
    assert got.max_attempts == 5
    assert got.error is None
    assert got.worker_id is None
    assert got.started_at is None
    assert got.finished_at is None
    assert got.submitted_by == "alice"
    assert got.trigger == Trigger.UPLOAD
    assert got.date_partition == task.date_partition == date_partition(task.created_at)
    assert close_to(got.created_at, task.created_at)
    assert got.cancel_requested is False
    assert got.history == []
    assert got.delayed is False


def test_submit_stores_a_pending_task_whatever_status_it_is_given(backend: Backend) -> None:
    task = make_task(status=TaskStatus.COMPLETED)
    stored, created = backend.submit(task)
    assert created
    assert stored.status == TaskStatus.PENDING
    assert get(backend, task.id).status == TaskStatus.PENDING
    assert [c.task.id for c in backend.claim("w1", [task.kind], 1, LONG_LEASE_S)] == [task.id]


def test_submit_with_existing_idempotency_key_returns_existing_task(backend: Backend) -> None:
    first = submit(backend, idempotency_key="input/a.mp4@etag1", params={"v": 1})
    second_task = make_task(kind=first.kind, idempotency_key="input/a.mp4@etag1", params={"v": 2})
    existing, created = backend.submit(second_task)
    assert created is False
    assert existing.id == first.id
    assert existing.params == {"v": 1}
    assert backend.get(second_task.id) is None
    assert [t.id for t in list_all(backend, 50, kind=first.kind)] == [first.id]

    # another key, or no key at all, creates new tasks
    other, created = backend.submit(make_task(kind=first.kind, idempotency_key="other"))
    assert created and other.id != first.id
    assert backend.submit(make_task(kind=first.kind))[1] is True
    assert backend.submit(make_task(kind=first.kind))[1] is True
    assert len(list_all(backend, 50, kind=first.kind)) == 4


def test_concurrent_submits_with_one_idempotency_key_create_one_task(
    backend: Backend,
) -> None:
    kind = unique_kind()
    results: list[tuple[Task, bool]] = []
    lock = threading.Lock()

    def submitter(_: int) -> None:
        r = backend.submit(make_task(kind=kind, idempotency_key="same-key"))
        with lock:
            results.append(r)

    run_threads(8, submitter)
    assert sum(created for _, created in results) == 1
    assert len({task.id for task, _ in results}) == 1
    assert len(list_all(backend, 50, kind=kind)) == 1


def test_get_unknown_id_returns_none(backend: Backend) -> None:
    assert backend.get("01hzzzzzzzzzzzzzzzzzzzzzzz") is None
    assert backend.get("no-such-task") is None


# -- claim -------------------------------------------------------------------------
def test_claim_order_is_priority_desc_then_oldest_first(backend: Backend) -> None:
    kind = unique_kind()
    priorities = [0, 5, 0, 5, -1, 10, 0]
    tasks = [submit(backend, kind=kind, priority=p) for p in priorities]
    expected = [
        t.id for t in sorted(tasks, key=lambda t: (-t.priority, tasks.index(t)))
    ]  # stable: submission order within a priority

    order: list[str] = []
    while got := backend.claim("w1", [kind], 1, LONG_LEASE_S):
        order.extend(c.task.id for c in got)
    assert order == expected


def test_claim_batch_takes_the_top_of_the_queue(backend: Backend) -> None:
    kind = unique_kind()
    low = [submit(backend, kind=kind, priority=0) for _ in range(3)]
    high = [submit(backend, kind=kind, priority=3) for _ in range(2)]
    got = backend.claim("w1", [kind], 3, LONG_LEASE_S)
    assert {c.task.id for c in got} == {high[0].id, high[1].id, low[0].id}


def test_claim_prefers_an_older_retried_task_at_equal_priority(backend: Backend) -> None:
    kind = unique_kind()
    old = submit(backend, kind=kind)
    c = claim_one(backend, old)
    backend.fail(c.lease, "corrupt", retryable=False)
    newer = submit(backend, kind=kind)
    backend.retry(old.id)
    got = backend.claim("w1", [kind], 1, LONG_LEASE_S)
    assert [x.task.id for x in got] == [old.id]
    assert [x.task.id for x in backend.claim("w1", [kind], 1, LONG_LEASE_S)] == [newer.id]


def test_claim_respects_kinds(backend: Backend) -> None:
    ka, kb = unique_kind(), unique_kind()
    a = [submit(backend, kind=ka) for _ in range(2)]
    b = [submit(backend, kind=kb) for _ in range(2)]

    assert backend.claim("w1", [], 10, LONG_LEASE_S) == []
    assert backend.claim("w1", [unique_kind()], 10, LONG_LEASE_S) == []
    got_b = backend.claim("w1", [kb], 10, LONG_LEASE_S)
    assert sorted(c.task.id for c in got_b) == sorted(t.id for t in b)
    assert all(c.task.kind == kb for c in got_b)
    got_a = backend.claim("w1", [kb, ka], 10, LONG_LEASE_S)
    assert sorted(c.task.id for c in got_a) == sorted(t.id for t in a)


def test_claim_respects_capacity(backend: Backend) -> None:
    kind = unique_kind()
    tasks = [submit(backend, kind=kind) for _ in range(5)]
    assert backend.claim("w1", [kind], 0, LONG_LEASE_S) == []
    first = backend.claim("w1", [kind], 2, LONG_LEASE_S)
    assert len(first) == 2
    second = backend.claim("w1", [kind], 2, LONG_LEASE_S)
    assert len(second) == 2
    third = backend.claim("w1", [kind], 2, LONG_LEASE_S)
    assert len(third) == 1
    assert backend.claim("w1", [kind], 2, LONG_LEASE_S) == []
    claimed = [c.task.id for c in first + second + third]
    assert sorted(claimed) == sorted(t.id for t in tasks)


def test_claim_with_max_gpus_takes_only_tasks_whose_gpus_fit(backend: Backend) -> None:
    kind = unique_kind()
    needs = {n: submit(backend, kind=kind, gpus=n) for n in (0, 4, 1, 2)}
    top = submit(backend, kind=kind, gpus=2, priority=5)  # first in line, but needs 2

    got = backend.claim("w1", [kind], 10, LONG_LEASE_S, max_gpus=1)
    assert [c.task.id for c in got] == [needs[0].id, needs[1].id]  # in claim order
    assert [c.task.gpus for c in got] == [0, 1]
    for t in (needs[2], needs[4], top):  # passed over untouched: no attempt counted
        left = get(backend, t.id)
        assert (left.status, left.attempts, left.history) == (TaskStatus.PENDING, 0, [])
    assert backend.claim("w1", [kind], 10, LONG_LEASE_S, max_gpus=0) == []
    assert backend.claim("w1", [kind], 10, LONG_LEASE_S, max_gpus=1) == []

    got = backend.claim("w2", [kind], 10, LONG_LEASE_S, max_gpus=2)
    assert [c.task.id for c in got] == [top.id, needs[2].id]
    assert all(c.lease.attempt == 1 for c in got)
    got = backend.claim("w3", [kind], 10, LONG_LEASE_S)  # no limit given: any task
    assert [c.task.id for c in got] == [needs[4].id]
    assert get(backend, needs[4].id).gpus == 4


def test_claim_sets_processing_attempt_worker_history_and_lease(backend: Backend) -> None:
    task = submit(backend, max_attempts=4)
    before = utcnow()
    c = claim_one(backend, task, worker_id="worker-7", lease_s=30)
    after = utcnow()

    for t in (c.task, get(backend, task.id)):
        assert t.status == TaskStatus.PROCESSING
        assert t.attempts == 1
        assert t.worker_id == "worker-7"
        assert t.started_at is not None
        assert before - TOLERANCE <= t.started_at <= after + TOLERANCE
        assert len(t.history) == 1
        h = t.history[0]
        assert h.number == 1
        assert h.worker_id == "worker-7"
        assert before - TOLERANCE <= h.started_at <= after + TOLERANCE
        assert h.finished_at is None
        assert h.outcome is None

    lease = c.lease
    assert lease.task_id == task.id
    assert lease.worker_id == "worker-7"
    assert lease.attempt == 1
    assert isinstance(lease.token, str) and len(lease.token) >= 16
    low, high = before + timedelta(seconds=30), after + timedelta(seconds=30)
    assert low - TOLERANCE <= lease.expires_at <= high + TOLERANCE


def test_every_claim_issues_a_fresh_lease_token(backend: Backend) -> None:
    kind = unique_kind()
    a, b = submit(backend, kind=kind), submit(backend, kind=kind)
    ca, cb = backend.claim("w1", [kind], 2, LONG_LEASE_S)
    assert ca.lease.token != cb.lease.token
    backend.release(ca.lease)
    again = claim_one(backend, a)
    assert again.lease.token not in (ca.lease.token, cb.lease.token)
    assert {ca.task.id, cb.task.id} == {a.id, b.id}


@pytest.mark.parametrize("handles", ["shared-handle", "handle-per-worker"])
def test_concurrent_claims_never_hand_out_a_task_twice(
    open_backend: BackendOpener, handles: str
) -> None:
    n_tasks, n_workers = 200, 4
    main = open_backend()
    kind = unique_kind()
    ids = [submit(main, kind=kind).id for _ in range(n_tasks)]
    workers = [main if handles == "shared-handle" else open_backend() for _ in range(n_workers)]
    claimed: list[list[str]] = [[] for _ in range(n_workers)]

    def worker(i: int) -> None:
        b = workers[i]
        n = 0
        while got := b.claim(f"w{i}", [kind], 1 + (n % 3), LONG_LEASE_S):
            n += 1
            for c in got:
                claimed[i].append(c.task.id)
                b.complete(c.lease, [])

    run_threads(n_workers, worker, timeout=60)
    counts = Counter(task_id for per_worker in claimed for task_id in per_worker)
    assert [tid for tid, n in counts.items() if n > 1] == []
    assert sorted(counts) == sorted(ids)
    assert all(get(main, tid).status == TaskStatus.COMPLETED for tid in ids)


# -- heartbeat ---------------------------------------------------------------------
def test_heartbeat_renews_every_held_lease_and_records_the_worker(backend: Backend) -> None:
    kind = unique_kind()
    tasks = [submit(backend, kind=kind) for _ in range(2)]
    claims = backend.claim("w1", [kind], 2, SHORT_LEASE_S)
    assert len(claims) == 2
    info = WorkerInfo(
        id="w1",
        hostname="gpu-box-1",
        pid=4242,
        kinds=[kind],
        concurrency=2,
        running=[t.id for t in tasks],
        capabilities={"gpus": [0, 1]},
        version="test",
    )
    hb = backend.heartbeat(info, [c.lease for c in claims], lease_s=LONG_LEASE_S)
    assert sorted(hb.renewed) == sorted(t.id for t in tasks)
    assert hb.lost == []
    assert hb.cancel == []

    expire(*claims)  # the original (short) leases are long gone now
    assert backend.reap() == 0
    for c in claims:
        assert get(backend, c.task.id).status == TaskStatus.PROCESSING
        backend.complete(c.lease, [])

    [seen] = [w for w in backend.workers() if w.id == "w1"]
    assert seen.hostname == "gpu-box-1"
    assert seen.pid == 4242
    assert seen.kinds == [kind]
    assert seen.concurrency == 2
    assert sorted(seen.running) == sorted(t.id for t in tasks)
    assert seen.capabilities == {"gpus": [0, 1]}
    assert abs(seen.last_seen - utcnow()) < timedelta(seconds=5)


def test_workers_lists_only_recently_seen_workers(backend: Backend) -> None:
    # a window of 1 s against a gap of 1.5 s: a heartbeat and a listing on moto under
    # load take several tenths of a second (0.2 s against 0.4 s failed there)
    backend.heartbeat(WorkerInfo(id="old-worker"), [], lease_s=LONG_LEASE_S)
    time.sleep(1.5)
    backend.heartbeat(WorkerInfo(id="new-worker"), [], lease_s=LONG_LEASE_S)
    assert [w.id for w in backend.workers(active_within_s=1.0)] == ["new-worker"]
    assert sorted(w.id for w in backend.workers(active_within_s=60)) == [
        "new-worker",
        "old-worker",
    ]
    # a later heartbeat refreshes the record instead of adding another
    backend.heartbeat(WorkerInfo(id="old-worker", hostname="h2"), [], lease_s=LONG_LEASE_S)
    ws = [w for w in backend.workers(active_within_s=1.0) if w.id == "old-worker"]
    assert len(ws) == 1 and ws[0].hostname == "h2"


def test_heartbeat_reports_lost_leases(backend: Backend) -> None:
    reaped = submit(backend)
    redelivered = submit(backend)
    cancelled = submit(backend, max_attempts=5)
    finished = submit(backend)
    forged = submit(backend)
    held = submit(backend)

    c_reaped = claim_one(backend, reaped, lease_s=SHORT_LEASE_S)
    c_redelivered = claim_one(backend, redelivered, lease_s=SHORT_LEASE_S)
    c_cancelled = claim_one(backend, cancelled, lease_s=SHORT_LEASE_S)
    c_finished = claim_one(backend, finished)
    c_forged = claim_one(backend, forged)
    c_held = claim_one(backend, held)

    backend.cancel(cancelled.id)
    expire(c_reaped, c_redelivered, c_cancelled)
    assert backend.reap() == 3
    assert get(backend, cancelled.id).status == TaskStatus.CANCELLED
    c_other = reclaim(backend, redelivered, "w2")
    backend.complete(c_finished.lease, [])

    leases = [
        c_reaped.lease,
        c_redelivered.lease,
        c_cancelled.lease,
        c_finished.lease,
        c_forged.lease.model_copy(update={"token": "f" * 32}),
        c_held.lease,
    ]
    hb = backend.heartbeat(WorkerInfo(id="w1"), leases, lease_s=LONG_LEASE_S)
    assert sorted(hb.lost) == sorted(
        [reaped.id, redelivered.id, cancelled.id, finished.id, forged.id]
    )
    assert hb.renewed == [held.id]
    assert hb.cancel == []

    # a lost lease is not renewed: the other worker still owns the task
    assert get(backend, redelivered.id).worker_id == "w2"
    backend.complete(c_other.lease, [])
    assert get(backend, reaped.id).status == TaskStatus.PENDING


def test_heartbeat_reports_cancel_requests(backend: Backend) -> None:
    task = submit(backend)
    other = submit(backend)
    c = claim_one(backend, task)
    c_other = claim_one(backend, other)
    requested = backend.cancel(task.id)
    assert requested.status == TaskStatus.PROCESSING
    assert requested.cancel_requested is True

    hb = backend.heartbeat(WorkerInfo(id="w1"), [c.lease, c_other.lease], lease_s=LONG_LEASE_S)
    assert hb.cancel == [task.id]
    assert sorted(hb.renewed) == sorted([task.id, other.id])
    assert hb.lost == []


def test_heartbeat_with_unknown_task_reports_it_lost(backend: Backend) -> None:
    lease = Lease(
        task_id="01hzzzzzzzzzzzzzzzzzzzzzzz",
        token="t" * 32,
        worker_id="w1",
        attempt=1,
        expires_at=utcnow(),
    )
    hb = backend.heartbeat(WorkerInfo(id="w1"), [lease], lease_s=LONG_LEASE_S)
    assert hb.lost == [lease.task_id]
    assert hb.renewed == []


# -- progress / complete -------------------------------------------------------
def test_progress_is_recorded(backend: Backend) -> None:
    task = submit(backend)
    c = claim_one(backend, task)
    backend.progress(c.lease, Progress(percent=42.5, phase="encode 720p", message="frame 1200"))
    got = get(backend, task.id)
    assert got.progress == Progress(percent=42.5, phase="encode 720p", message="frame 1200")
    assert got.status == TaskStatus.PROCESSING


def test_complete_records_outputs_and_finishes_the_attempt(backend: Backend) -> None:
    task = submit(backend)
    c = claim_one(backend, task)
    outputs = [
        OutputFile(
            name="720p",
            bucket="output",
            key="clips/a/720p.mp4",
            size=123_456,
            content_type="video/mp4",
            meta={"width": 1280, "height": 720},
        ),
        OutputFile(name="poster", bucket="output", key="clips/a/poster.jpg", size=9),
    ]
    done = backend.complete(c.lease, outputs)
    for t in (done, get(backend, task.id)):
        assert t.status == TaskStatus.COMPLETED
        assert t.outputs == outputs
        assert t.error is None
        assert t.attempts == 1
        assert t.finished_at is not None and t.started_at is not None
        assert t.finished_at >= t.started_at
        assert t.history[-1].outcome == "completed"
        assert t.history[-1].finished_at is not None
    assert backend.claim("w1", [task.kind], 1, LONG_LEASE_S) == []


def test_complete_many_fences_each_item_by_its_own_lease(backend: Backend) -> None:
    """One stale lease in a batch fails that item only; each completed item's log lines
    are in its log with it, a refused item's are not; a repeated batch (its answer was
    lost) is answered alike and appends no line twice."""
    a, b, c = submit(backend, max_attempts=3), submit(backend), submit(backend)
    ca, cb, cc = (
        claim_one(backend, a, lease_s=SHORT_LEASE_S),
        claim_one(backend, b),
        claim_one(backend, c),
    )
    expire(ca)
    assert backend.reap() == 1
    fresh = reclaim(backend, a, "w-new")
    ts = utcnow()
    out = [OutputFile(name="720p", bucket="output", key="b/720p.mp4", size=7)]
    items = [
        Completion(ca.lease, [], [(ts, "worker", "stale line")]),
        Completion(cb.lease, out, [(ts, "worker", "b 1"), (ts, "worker", "Task completed: b")]),
        Completion(cc.lease, [], []),
    ]
    for _ in range(2):  # the second call repeats the first, whose answer was "lost"
        got = backend.complete_many(items)
        assert [type(r) for r in got] == [LeaseLost, type(None), type(None)]
        assert [ln.line for ln in backend.read_logs(b.id)] == ["b 1", "Task completed: b"]
        assert backend.read_logs(a.id) == [] and backend.read_logs(c.id) == []
    done = get(backend, b.id)
    assert done.status == TaskStatus.COMPLETED and done.outputs == out
    assert done.history[-1].outcome == "completed" and done.history[-1].finished_at is not None
    assert get(backend, c.id).status == TaskStatus.COMPLETED
    assert get(backend, a.id).status == TaskStatus.PROCESSING  # the fresh attempt's, untouched
    assert backend.complete_many([Completion(fresh.lease, [])]) == [None]
    assert backend.complete_many([]) == []


def test_submit_many_stores_each_task_with_idempotency(backend: Backend) -> None:
    first = submit(backend, idempotency_key="dup-key")
    tasks = [make_task(), make_task(idempotency_key="dup-key"), make_task()]
    got = backend.submit_many(tasks)
    assert [created for _, created in got] == [True, False, True]
    assert got[1][0].id == first.id
    for task, _ in (got[0], got[2]):
        assert get(backend, task.id).status == TaskStatus.PENDING
        assert [c.task.id for c in backend.claim("w1", [task.kind], 1, LONG_LEASE_S)] == [task.id]


# -- fencing ---------------------------------------------------------------------
def test_forged_token_is_fenced(backend: Backend) -> None:
    task = submit(backend)
    c = claim_one(backend, task)
    assert_fenced(backend, c.lease.model_copy(update={"token": "0" * 32}))
    assert_fenced(backend, c.lease.model_copy(update={"token": ""}))
    # the genuine lease still works
    backend.progress(c.lease, Progress(percent=10))
    assert backend.complete(c.lease, []).status == TaskStatus.COMPLETED


def test_another_tasks_lease_is_fenced(backend: Backend) -> None:
    a, b = submit(backend), submit(backend)
    ca = claim_one(backend, a, worker_id="w1")
    cb = claim_one(backend, b, worker_id="w2")
    # b's token presented for a, by either worker
    assert_fenced(backend, cb.lease.model_copy(update={"task_id": a.id}))
    assert_fenced(backend, cb.lease.model_copy(update={"task_id": a.id, "worker_id": "w1"}))
    backend.complete(ca.lease, [])
    backend.complete(cb.lease, [])


def test_stale_worker_is_fenced_after_reap_redelivers_its_task(backend: Backend) -> None:
    task = submit(backend, max_attempts=3)
    stale = claim_one(backend, task, worker_id="w-old", lease_s=SHORT_LEASE_S)
    expire(stale)
    assert backend.reap() == 1
    fresh = reclaim(backend, task, "w-new")
    assert fresh.lease.attempt == 2
    assert fresh.lease.token != stale.lease.token

    assert_fenced(backend, stale.lease)
    backend.progress(fresh.lease, Progress(percent=50, phase="fresh"))
    assert get(backend, task.id).progress.phase == "fresh"

    out = [OutputFile(name="720p", bucket="output", key="fresh.mp4")]
    done = backend.complete(fresh.lease, out)
    assert done.status == TaskStatus.COMPLETED
    assert_fenced(backend, stale.lease)
    final = get(backend, task.id)
    assert final.status == TaskStatus.COMPLETED
    assert final.worker_id == "w-new"
    assert final.outputs == out


@pytest.mark.parametrize("ending", ["complete", "fail", "release"])
def test_a_lease_is_spent_once_the_attempt_ends(backend: Backend, ending: str) -> None:
    task = submit(backend, max_attempts=3)
    c = claim_one(backend, task)
    worker_ops(backend, c.lease)[ending]()
    assert_fenced(backend, c.lease, completed=ending == "complete")
    if ending != "complete":  # back in the queue (or failed): a new claim gets a new lease
        if get(backend, task.id).status == TaskStatus.FAILED:
            backend.retry(task.id)
        again = reclaim(backend, task, "w2")
        assert_fenced(backend, c.lease)
        backend.complete(again.lease, [])


def test_lease_on_unknown_task_is_fenced(backend: Backend) -> None:
    lease = Lease(
        task_id="01hzzzzzzzzzzzzzzzzzzzzzzz",
        token="t" * 32,
        worker_id="w1",
        attempt=1,
        expires_at=utcnow(),
    )
    for op in worker_ops(backend, lease).values():
        with pytest.raises(LeaseLost):
            op()


# -- fail / release -------------------------------------------------------------
def test_retryable_failure_is_delayed_by_the_backoff_then_redelivered(
    open_backend: BackendOpener,
) -> None:
    base = 2.0  # long enough that a loaded machine still claims before it ends
    backend = open_backend(backoff_base=base)
    task = submit(backend, max_attempts=3)
    c = claim_one(backend, task)
    failed_at = utcnow()
    t = backend.fail(c.lease, "encoder crashed", retryable=True, code="encoder_crash")

    assert t.status == TaskStatus.PENDING
    assert t.attempts == 1
    assert t.not_before is not None
    expected = failed_at + timedelta(seconds=backoff_seconds(1, base))
    assert abs(t.not_before - expected) < timedelta(milliseconds=250)
    stored = get(backend, task.id)
    assert stored.status == TaskStatus.PENDING
    assert stored.delayed is True
    assert stored.history[-1].outcome == "retry"
    assert stored.history[-1].error == "encoder crashed"

    counts = backend.counts()
    assert (counts.pending, counts.delayed, counts.processing) == (0, 1, 0)
    assert backend.claim("w1", [task.kind], 1, LONG_LEASE_S) == []

    again = reclaim(backend, task, "w2")
    assert utcnow() >= t.not_before - TOLERANCE
    assert again.task.attempts == 2
    assert again.lease.attempt == 2
    assert [h.number for h in again.task.history] == [1, 2]


def test_retryable_failure_after_max_attempts_fails_the_task(
    open_backend: BackendOpener,
) -> None:
    base = 0.2
    backend = open_backend(backoff_base=base)
    task = submit(backend, max_attempts=3)

    c1 = claim_one(backend, task)
    assert backend.fail(c1.lease, "boom 1", retryable=True).status == TaskStatus.PENDING
    c2 = reclaim(backend, task, "w1")
    failed_at = utcnow()
    t2 = backend.fail(c2.lease, "boom 2", retryable=True)
    assert t2.status == TaskStatus.PENDING
    assert t2.not_before is not None  # the back-off grows with the attempts
    expected = failed_at + timedelta(seconds=backoff_seconds(2, base))
    assert abs(t2.not_before - expected) < timedelta(milliseconds=150)

    c3 = reclaim(backend, task, "w1")
    assert c3.task.attempts == 3
    t3 = backend.fail(c3.lease, "boom 3", retryable=True, code="encoder_crash")
    for t in (t3, get(backend, task.id)):
        assert t.status == TaskStatus.FAILED
        assert t.attempts == 3
        assert t.error == "boom 3"
        assert t.error_code == "encoder_crash"
        assert t.finished_at is not None
        assert [h.outcome for h in t.history] == ["retry", "retry", "failed"]
    time.sleep(backoff_seconds(3, base) + 0.1)
    assert backend.claim("w1", [task.kind], 1, LONG_LEASE_S) == []


def test_non_retryable_failure_fails_at_once(backend: Backend) -> None:
    task = submit(backend, max_attempts=5)
    c = claim_one(backend, task)
    t = backend.fail(c.lease, "not a video file", retryable=False, code="invalid_input")
    for got in (t, get(backend, task.id)):
        assert got.status == TaskStatus.FAILED
        assert got.attempts == 1
        assert got.error == "not a video file"
        assert got.error_code == "invalid_input"
        assert got.finished_at is not None
        assert got.history[-1].outcome == "failed"
    time.sleep(FAST_BACKOFF_S * 2)
    assert backend.claim("w1", [task.kind], 1, LONG_LEASE_S) == []


def test_release_hands_the_task_back_without_counting_the_attempt(backend: Backend) -> None:
    task = submit(backend, max_attempts=1)
    c = claim_one(backend, task)
    t = backend.release(c.lease)
    for got in (t, get(backend, task.id)):
        assert got.status == TaskStatus.PENDING
        assert got.attempts == 0
        assert got.history[-1].outcome == "released"
        assert got.delayed is False
    # claimable at once, and max_attempts=1 still allows a real attempt
    again = claim_one(backend, task, worker_id="w2")
    assert again.task.attempts == 1
    assert backend.complete(again.lease, []).status == TaskStatus.COMPLETED


def test_release_after_an_outage_delays_the_task_and_says_why(backend: Backend) -> None:
    task = submit(backend, max_attempts=1)
    c = claim_one(backend, task)
    t = backend.release(c.lease, delay_s=30, error="infrastructure unavailable: db down")
    for got in (t, get(backend, task.id)):
        assert got.status == TaskStatus.PENDING
        assert got.attempts == 0, "an outage does not use up the task's attempts"
        assert got.delayed is True
        assert got.history[-1].outcome == "released"
        assert got.history[-1].error == "infrastructure unavailable: db down"
    assert backend.claim("w2", [task.kind], 1, LONG_LEASE_S) == [], "not before the delay"


def test_outputs_committed_forgets_the_staged_twins(backend: Backend) -> None:
    task = submit(backend)
    c = claim_one(backend, task)
    staged = [
        OutputFile(
            name="mp4",
            bucket="output",
            key="clips/a/mp4.mp4",
            size=7,
            staged_key=f".conveyor-staging/{task.id}/01abc-1/clips/a/mp4.mp4",
        ),
        OutputFile(name="log", bucket="output", key="clips/a/log.txt", size=1),
    ]
    done = backend.complete(c.lease, staged)
    assert [o.staged_key for o in done.outputs] == [staged[0].staged_key, None]
    if type(backend).__name__ == "SplitBackend":
        # a remote worker cannot move objects: the API publishes them right after it
        # answers (here there is nothing to move, so they are recorded as published)
        deadline = time.monotonic() + 10
        while any(o.staged_key for o in get(backend, task.id).outputs):
            assert time.monotonic() < deadline, "the API never published the outputs"
            time.sleep(0.05)
        after = get(backend, task.id)
    else:
        # a repeat of the completion is still recognised while the outputs are staged ...
        assert backend.complete(c.lease, staged) == done
        after = backend.outputs_committed(task.id)
    assert [o.staged_key for o in after.outputs] == [None, None]
    assert [(o.key, o.size) for o in after.outputs] == [(o.key, o.size) for o in staged]
    assert get(backend, task.id) == after
    assert backend.outputs_committed(task.id) == after, "twice is the same as once"
    # ... and after they were published
    assert backend.complete(c.lease, staged) == after


def test_outputs_committed_leaves_unfinished_tasks_alone(backend: Backend) -> None:
    task = submit(backend)
    assert backend.outputs_committed(task.id) == get(backend, task.id)
    with pytest.raises(TaskNotFound):
        backend.outputs_committed("01hzzzzzzzzzzzzzzzzzzzzzzz")


# -- reap ------------------------------------------------------------------------
def test_reap_leaves_live_leases_alone(backend: Backend) -> None:
    task = submit(backend)
    c = claim_one(backend, task, lease_s=LONG_LEASE_S)
    assert backend.reap() == 0
    assert get(backend, task.id).status == TaskStatus.PROCESSING
    backend.complete(c.lease, [])


def test_reap_requeues_an_expired_lease_counting_the_attempt(backend: Backend) -> None:
    task = submit(backend, max_attempts=3)
    c = claim_one(backend, task, worker_id="w-dead", lease_s=SHORT_LEASE_S)
    expire(c)
    assert backend.reap() == 1
    assert backend.reap() == 0  # already handled

    t = get(backend, task.id)
    assert t.status == TaskStatus.PENDING
    assert t.attempts == 1
    assert t.history[-1].outcome == "lease_expired"
    assert "lease expired" in (t.history[-1].error or "")
    again = reclaim(backend, task, "w-alive")
    assert again.task.attempts == 2


def test_reap_fails_the_task_once_attempts_reach_max(backend: Backend) -> None:
    task = submit(backend, max_attempts=2)
    c1 = claim_one(backend, task, lease_s=SHORT_LEASE_S)
    expire(c1)
    assert backend.reap() == 1
    assert get(backend, task.id).status == TaskStatus.PENDING
    c2 = reclaim(backend, task, "w2", lease_s=SHORT_LEASE_S)
    expire(c2)
    assert backend.reap() == 1

    t = get(backend, task.id)
    assert t.status == TaskStatus.FAILED
    assert t.attempts == 2
    assert "lease expired" in (t.error or "")
    assert t.finished_at is not None
    assert [h.outcome for h in t.history] == ["lease_expired", "lease_expired"]
    time.sleep(FAST_BACKOFF_S * 4)
    assert backend.claim("w3", [task.kind], 1, LONG_LEASE_S) == []


def test_reap_cancels_an_expired_task_whose_cancel_was_requested(backend: Backend) -> None:
    task = submit(backend, max_attempts=5)
    c = claim_one(backend, task, lease_s=SHORT_LEASE_S)
    backend.cancel(task.id)
    expire(c)
    assert backend.reap() == 1
    t = get(backend, task.id)
    assert t.status == TaskStatus.CANCELLED
    assert t.finished_at is not None
    time.sleep(FAST_BACKOFF_S * 2)
    assert backend.claim("w1", [task.kind], 1, LONG_LEASE_S) == []


def test_concurrent_reapers_touch_each_expired_lease_once(open_backend: BackendOpener) -> None:
    main = open_backend()
    kind = unique_kind()
    tasks = [submit(main, kind=kind, max_attempts=3) for _ in range(12)]
    claims = main.claim("w-dead", [kind], 12, SHORT_LEASE_S)
    assert len(claims) == 12
    handles = [main, main, open_backend(), open_backend()]
    touched = [0] * len(handles)
    expire(*claims)

    def reaper(i: int) -> None:
        for _ in range(3):
            touched[i] += handles[i].reap()

    run_threads(len(handles), reaper)
    assert sum(touched) == 12
    for t in tasks:
        got = get(main, t.id)
        assert got.status == TaskStatus.PENDING
        assert got.attempts == 1
        assert [h.outcome for h in got.history] == ["lease_expired"]


# -- cancel ------------------------------------------------------------------------
def test_cancel_pending_task_cancels_at_once(backend: Backend) -> None:
    task = submit(backend)
    t = backend.cancel(task.id)
    for got in (t, get(backend, task.id)):
        assert got.status == TaskStatus.CANCELLED
        assert got.finished_at is not None
    assert backend.claim("w1", [task.kind], 1, LONG_LEASE_S) == []


def test_cancel_delayed_task_cancels_at_once(open_backend: BackendOpener) -> None:
    backend = open_backend(backoff_base=0.3)
    task = submit(backend, max_attempts=3)
    c = claim_one(backend, task)
    backend.fail(c.lease, "transient", retryable=True)
    assert get(backend, task.id).delayed
    assert backend.cancel(task.id).status == TaskStatus.CANCELLED
    time.sleep(0.4)
    assert backend.claim("w1", [task.kind], 1, LONG_LEASE_S) == []
    assert get(backend, task.id).status == TaskStatus.CANCELLED


def test_cancel_processing_task_requests_it_and_the_workers_fail_cancels(
    backend: Backend,
) -> None:
    task = submit(backend, max_attempts=5)
    c = claim_one(backend, task)
    t = backend.cancel(task.id)
    assert t.status == TaskStatus.PROCESSING
    assert t.cancel_requested is True
    assert get(backend, task.id).cancel_requested is True
    # asking twice is harmless
    assert backend.cancel(task.id).status == TaskStatus.PROCESSING

    hb = backend.heartbeat(WorkerInfo(id="w1"), [c.lease], lease_s=LONG_LEASE_S)
    assert hb.cancel == [task.id]

    # the worker kills the job and reports a (retryable-looking) failure
    done = backend.fail(c.lease, "killed: SIGTERM", retryable=True)
    for got in (done, get(backend, task.id)):
        assert got.status == TaskStatus.CANCELLED
        assert got.finished_at is not None
        assert got.history[-1].outcome == "cancelled"
    time.sleep(FAST_BACKOFF_S * 4)
    assert backend.claim("w1", [task.kind], 1, LONG_LEASE_S) == []


def test_release_of_a_cancel_requested_task_cancels_it(backend: Backend) -> None:
    task = submit(backend)
    c = claim_one(backend, task)
    backend.cancel(task.id)
    assert backend.release(c.lease).status == TaskStatus.CANCELLED
    assert backend.claim("w1", [task.kind], 1, LONG_LEASE_S) == []


@pytest.mark.parametrize("final", ["completed", "failed", "cancelled"])
def test_cancel_final_task_is_a_conflict(backend: Backend, final: str) -> None:
    task = submit(backend)
    if final == "cancelled":
        backend.cancel(task.id)
    else:
        c = claim_one(backend, task)
        if final == "completed":
            backend.complete(c.lease, [])
        else:
            backend.fail(c.lease, "bad", retryable=False)
    before = get(backend, task.id)
    assert before.status == final
    with pytest.raises(Conflict):
        backend.cancel(task.id)
    assert get(backend, task.id) == before


def test_cancel_unknown_task_is_not_found(backend: Backend) -> None:
    with pytest.raises(TaskNotFound):
        backend.cancel("01hzzzzzzzzzzzzzzzzzzzzzzz")


# -- retry -------------------------------------------------------------------------
@pytest.mark.parametrize("final", ["failed", "cancelled"])
def test_retry_puts_a_failed_or_cancelled_task_back(backend: Backend, final: str) -> None:
    task = submit(backend, max_attempts=1)
    c = claim_one(backend, task)
    if final == "failed":
        backend.fail(c.lease, "bad", retryable=False, code="oops")
    else:
        backend.cancel(task.id)
        backend.fail(c.lease, "killed", retryable=True)
    assert get(backend, task.id).status == final

    t = backend.retry(task.id)
    for got in (t, get(backend, task.id)):
        assert got.status == TaskStatus.PENDING
        assert got.attempts == 0
        assert got.error is None
        assert got.outputs == []
        assert got.cancel_requested is False
        assert got.delayed is False
        assert len(got.history) == 1  # history is kept
    again = claim_one(backend, task, worker_id="w2")
    assert again.task.attempts == 1
    assert backend.complete(again.lease, []).status == TaskStatus.COMPLETED


@pytest.mark.parametrize("state", ["pending", "processing", "completed"])
def test_retry_of_a_task_that_is_not_failed_or_cancelled_is_a_conflict(
    backend: Backend, state: str
) -> None:
    task = submit(backend)
    if state != "pending":
        c = claim_one(backend, task)
        if state == "completed":
            backend.complete(c.lease, [])
    before = get(backend, task.id)
    assert before.status == state
    with pytest.raises(Conflict):
        backend.retry(task.id)
    assert get(backend, task.id) == before


def test_retry_unknown_task_is_not_found(backend: Backend) -> None:
    with pytest.raises(TaskNotFound):
        backend.retry("01hzzzzzzzzzzzzzzzzzzzzzzz")


# -- clear_pending -----------------------------------------------------------------
def test_clear_pending_cancels_ready_and_delayed_tasks_only(
    open_backend: BackendOpener,
) -> None:
    backend = open_backend(backoff_base=60)
    ready = [submit(backend) for _ in range(3)]
    delayed = submit(backend, max_attempts=3)
    backend.fail(claim_one(backend, delayed).lease, "transient", retryable=True)
    running = submit(backend)
    c_running = claim_one(backend, running)
    done = submit(backend)
    backend.complete(claim_one(backend, done).lease, [])

    assert backend.clear_pending() == 4
    for t in [*ready, delayed]:
        assert get(backend, t.id).status == TaskStatus.CANCELLED
    assert get(backend, running.id).status == TaskStatus.PROCESSING
    assert get(backend, done.id).status == TaskStatus.COMPLETED
    counts = backend.counts()
    assert (counts.pending, counts.delayed, counts.processing) == (0, 0, 1)
    assert backend.clear_pending() == 0
    backend.complete(c_running.lease, [])  # the running task was left alone


# -- list ------------------------------------------------------------------------
def test_list_is_newest_first(backend: Backend) -> None:
    kind = unique_kind()
    base = utcnow() - timedelta(hours=1)
    # submitted out of order: the order comes from created_at, not from arrival
    offsets = [3, 0, 5, 1, 4, 2]
    tasks = [submit(backend, kind=kind, created_at=base + timedelta(seconds=s)) for s in offsets]
    page = backend.list(kind=kind, limit=50)
    assert [t.id for t in page.items] == newest_first(tasks)
    assert page.next_cursor is None


def test_list_respects_limit(backend: Backend) -> None:
    kind = unique_kind()
    tasks = [submit(backend, kind=kind) for _ in range(5)]
    page = backend.list(kind=kind, limit=2)
    assert [t.id for t in page.items] == newest_first(tasks)[:2]
    assert page.next_cursor is not None


def test_list_filters_by_status_date_and_kind(backend: Backend) -> None:
    ka, kb = unique_kind(), unique_kind()
    base = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
    tasks: list[Task] = []
    for day in range(3):
        for kind in (ka, kb):
            for i in range(3):
                created = base + timedelta(days=day, minutes=i)
                tasks.append(submit(backend, kind=kind, created_at=created))
    for t in tasks[::3]:
        backend.cancel(t.id)
    got = backend.claim("w1", [tasks[4].kind], 1, LONG_LEASE_S)
    assert len(got) == 1  # one processing task among them
    state = {t.id: get(backend, t.id) for t in tasks}

    dates = ["2024-03-01", "2024-03-02", "2024-03-03", "2024-03-04"]
    statuses: list[TaskStatus | None] = [None, *TaskStatus]
    for status in statuses:
        for date in [None, *dates]:
            for kind_filter in (None, ka, kb):
                expected = [
                    t
                    for t in state.values()
                    if (status is None or t.status == status)
                    and (date is None or t.date_partition == date)
                    and (kind_filter is None or t.kind == kind_filter)
                ]
                filters: dict[str, Any] = {"status": status, "date": date, "kind": kind_filter}
                items = backend.list(limit=100, **filters).items
                if kind_filter is None:  # other tests' tasks do not exist here, but be strict
                    items = [t for t in items if t.kind in (ka, kb)]
                assert [t.id for t in items] == newest_first(expected), filters
    assert {t.date_partition for t in state.values()} == set(dates[:3])


def test_list_keyset_paging_returns_every_task_once_even_with_equal_created_at(
    backend: Backend,
) -> None:
    kind = unique_kind()
    base = utcnow() - timedelta(minutes=10)
    # groups of four tasks share one created_at, so pages split inside a group
    tasks = [
        submit(backend, kind=kind, created_at=base + timedelta(seconds=i // 4)) for i in range(23)
    ]
    expected = newest_first(tasks)
    for limit in (1, 3, 4, 5, 22, 23, 24, 100):
        seen = [t.id for t in list_all(backend, limit, kind=kind)]
        assert len(seen) == len(set(seen)), f"duplicates with limit={limit}"
        assert seen == expected, f"limit={limit}"


def test_list_paging_with_filters(backend: Backend) -> None:
    kind = unique_kind()
    base = datetime(2024, 5, 5, 8, 0, tzinfo=UTC)
    tasks = [
        submit(backend, kind=kind, created_at=base + timedelta(seconds=i // 3)) for i in range(20)
    ]
    for t in tasks[::4]:
        backend.cancel(t.id)
    pending = [t for i, t in enumerate(tasks) if i % 4]
    seen = list_all(backend, 3, status=TaskStatus.PENDING, date="2024-05-05", kind=kind)
    assert [t.id for t in seen] == newest_first(pending)
    assert all(t.status == TaskStatus.PENDING for t in seen)


def test_list_paging_is_stable_while_new_tasks_arrive(backend: Backend) -> None:
    kind = unique_kind()
    old = [submit(backend, kind=kind) for _ in range(10)]
    first = backend.list(kind=kind, limit=4)
    assert first.next_cursor is not None
    for _ in range(5):
        submit(backend, kind=kind)
    rest: list[Task] = list(first.items)
    cursor: str | None = first.next_cursor
    while cursor:
        page = backend.list(kind=kind, limit=4, cursor=cursor)
        rest.extend(page.items)
        cursor = page.next_cursor
    assert [t.id for t in rest] == newest_first(old)


@pytest.mark.parametrize("cursor", ["not-a-cursor", "!!!!", "abc", "Zm9v", "x" * 200])
def test_list_with_invalid_cursor_is_an_invalid_request(backend: Backend, cursor: str) -> None:
    submit(backend)
    with pytest.raises(InvalidRequest):
        backend.list(cursor=cursor)


# -- counts ------------------------------------------------------------------------
def test_counts(open_backend: BackendOpener) -> None:
    backend = open_backend(backoff_base=60)
    today = date_partition(utcnow())
    empty = backend.counts(today=today)
    assert (empty.pending, empty.delayed, empty.processing) == (0, 0, 0)
    assert (empty.completed_today, empty.failed_today, empty.cancelled_today) == (0, 0, 0)

    for _ in range(2):
        submit(backend)  # ready
    delayed = submit(backend, max_attempts=3)
    backend.fail(claim_one(backend, delayed).lease, "transient", retryable=True)
    claim_one(backend, submit(backend))  # processing
    for _ in range(3):
        backend.complete(claim_one(backend, submit(backend)).lease, [])
    backend.fail(claim_one(backend, submit(backend)).lease, "bad", retryable=False)
    backend.cancel(submit(backend).id)

    c = backend.counts(today=today)
    assert c.pending == 2
    assert c.delayed == 1
    assert c.processing == 1
    assert c.completed_today == 3
    assert c.failed_today == 1
    assert c.cancelled_today == 1
    if date_partition(utcnow()) == today:  # not across midnight
        assert backend.counts() == c

    other_day = backend.counts(today="2000-01-01")
    assert (other_day.pending, other_day.delayed, other_day.processing) == (2, 1, 1)
    assert (other_day.completed_today, other_day.failed_today, other_day.cancelled_today) == (
        0,
        0,
        0,
    )


# -- logs --------------------------------------------------------------------------
def test_append_and_read_logs(backend: Backend) -> None:
    task = submit(backend)
    other = submit(backend)
    ts = utcnow()
    backend.append_logs(
        task.id, 1, [(ts, "stdout", "frame=1"), (ts + timedelta(seconds=1), "stderr", "警告: 慢")]
    )
    backend.append_logs(other.id, 1, [(ts, "stdout", "someone else")])
    backend.append_logs(task.id, 1, [])
    backend.append_logs(
        task.id,
        2,
        [(ts + timedelta(seconds=2), "worker", f"attempt 2 line {i}") for i in range(3)],
    )

    lines = backend.read_logs(task.id)
    assert [(ln.attempt, ln.stream, ln.line) for ln in lines] == [
        (1, "stdout", "frame=1"),
        (1, "stderr", "警告: 慢"),
        (2, "worker", "attempt 2 line 0"),
        (2, "worker", "attempt 2 line 1"),
        (2, "worker", "attempt 2 line 2"),
    ]
    seqs = [ln.seq for ln in lines]
    assert seqs == sorted(set(seqs)) and seqs[0] > 0
    assert close_to(lines[0].ts, ts, timedelta(milliseconds=1))
    assert close_to(lines[1].ts, ts + timedelta(seconds=1), timedelta(milliseconds=1))

    assert [ln.line for ln in backend.read_logs(task.id, attempt=2)] == [
        f"attempt 2 line {i}" for i in range(3)
    ]
    assert [ln.seq for ln in backend.read_logs(task.id, after_seq=seqs[1])] == seqs[2:]
    assert [ln.seq for ln in backend.read_logs(task.id, attempt=1, after_seq=seqs[0])] == [seqs[1]]
    assert backend.read_logs(task.id, after_seq=seqs[-1]) == []
    assert [ln.line for ln in backend.read_logs(other.id)] == ["someone else"]
    assert backend.read_logs("01hzzzzzzzzzzzzzzzzzzzzzzz") == []

    # tailing: follow after_seq with a small limit
    tailed: list[int] = []
    after = 0
    while chunk := backend.read_logs(task.id, after_seq=after, limit=2):
        assert len(chunk) <= 2
        tailed.extend(ln.seq for ln in chunk)
        after = chunk[-1].seq
    assert tailed == seqs


# -- wait_for_work -----------------------------------------------------------------
def test_wait_for_work_returns_promptly_after_a_submit_from_another_thread(
    backend: Backend,
) -> None:
    kind = unique_kind()
    woke: list[float] = []

    def waiter(_: int) -> None:
        backend.wait_for_work(10.0)
        woke.append(time.monotonic())

    thread = threading.Thread(target=waiter, args=(0,), daemon=True)
    thread.start()
    time.sleep(0.3)  # let it block
    submitted = time.monotonic()
    submit(backend, kind=kind)
    thread.join(5.0)
    assert not thread.is_alive(), "wait_for_work did not return after a submit"
    assert woke[0] - submitted < 2.0
    assert [c.task.kind for c in backend.claim("w1", [kind], 1, LONG_LEASE_S)] == [kind]


def test_wait_for_work_wakes_on_a_submit_through_another_handle(
    open_backend: BackendOpener,
) -> None:
    """An idle worker of another process (another handle on the same store) wakes within
    a fraction of a second of a submit, not after its poll interval: LISTEN/NOTIFY,
    SQLite's wake sockets, SQS long polling, the API's long poll."""
    waiting, submitting = open_backend(), open_backend()
    kind = unique_kind()
    waiting.wait_for_work(0.0)  # a first call may only get ready to listen
    assert waiting.claim("w1", [kind], 1, LONG_LEASE_S) == []
    woke: list[float] = []

    def waiter() -> None:
        waiting.wait_for_work(10.0)
        woke.append(time.monotonic())

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    time.sleep(0.5)  # let it block
    submitted = time.monotonic()
    submit(submitting, kind=kind)
    thread.join(10.0)
    assert not thread.is_alive(), "wait_for_work did not return after the submit"
    assert woke[0] - submitted < 1.0
    assert [c.task.kind for c in waiting.claim("w1", [kind], 1, LONG_LEASE_S)] == [kind]


def test_a_burst_of_long_log_lines_is_kept_whole_and_once(backend: Backend) -> None:
    """200 lines of 3,000 CJK characters: 1.8 MB as UTF-8 JSON, over the API's
    1 MiB body limit in one request, so the https:// engine must split by size."""
    task = submit(backend)
    ts = utcnow()
    lines = [(ts, "stdout", f"{i:03d} " + "日志" * 1500) for i in range(200)]
    backend.append_logs(task.id, 1, lines)
    got = backend.read_logs(task.id, limit=1000)
    assert [ln.line for ln in got] == [line for _, _, line in lines]


def test_wait_for_work_returns_by_its_timeout(backend: Backend) -> None:
    start = time.monotonic()
    backend.wait_for_work(0.3)
    assert time.monotonic() - start < 3.0


def test_list_text_filters_on_a_substring_of_the_input_key(backend: Backend) -> None:
    for key in (
        "clips/Holiday_2025.mp4",
        "clips/holiday-2024.mov",
        "talks/keynote.mp4",
        "odd/100%_done.mp4",
    ):
        backend.submit(Task(kind="transcode", input=InputRef(bucket="in", key=key)))
    keys = sorted(t.input.key for t in backend.list(text="holiday").items if t.input)
    assert keys == ["clips/Holiday_2025.mp4", "clips/holiday-2024.mov"]
    assert [t.input.key for t in backend.list(text="100%").items if t.input] == [
        "odd/100%_done.mp4"
    ]
    assert backend.list(text="y_2").items[0].input.key == "clips/Holiday_2025.mp4"  # type: ignore[union-attr]
    assert backend.list(text="nothing-like-this").items == []


def test_throughput_counts_finished_tasks_per_window(backend: Backend) -> None:
    since = datetime.now(UTC) - timedelta(hours=3)
    for outcome in ("completed", "completed", "failed"):
        backend.submit(Task(kind="x"))
        [c] = backend.claim("w", ["x"], 1, lease_s=30)
        if outcome == "completed":
            backend.complete(c.lease, [])
        else:
            backend.fail(c.lease, "boom", retryable=False)
    points = backend.throughput(since, 3600)
    assert len(points) in (3, 4)
    assert points[0].start == since
    assert sum(p.completed for p in points) == 2
    assert sum(p.failed for p in points) == 1
    assert points[-1].completed == 2 and points[-1].failed == 1
