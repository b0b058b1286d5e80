"""The events contract (``conveyor.backends.events_base``), on every engine that keeps
events: the outbox row and the state change commit together; the stream never skips
an event; the dispatcher delivers every event at least once, in order per task.

The engines are ``conftest.BACKEND_ENGINES``' that keep events (SQLite, PostgreSQL,
DynamoDB; not the remote one, whose store half is the API's engine), filtered by
``CONVEYOR_TEST_ENGINES`` like the other suites; caller data on tasks runs on all.

Faults are real: the outbox write fails inside the engine's own transaction (SQL: a
trigger that raises; DynamoDB, where the event rides in the task item's own put: an
outbox attribute the server rejects, so it rejects the whole write), a receiver that
answers 500, a dispatcher that claims deliveries and dies.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from conveyor.backends.base import Backend
from conveyor.backends.events_base import EventStore, open_event_store
from conveyor.events import signing
from conveyor.events.dispatcher import Dispatcher
from conveyor.events.model import DeliveryState, Endpoint, Event, new_endpoint_id
from conveyor.events.settings import EventSettings
from conveyor.models import InputRef, OutputFile, Task, TaskStatus
from tests.webhook_receiver import Receiver

from .conftest import BACKEND_ENGINES, _engines

# remote: its store half is the API's engine (docs/events.md)
EVENT_ENGINES = [e for e in _engines(BACKEND_ENGINES) if e != "remote"]


@pytest.fixture(params=EVENT_ENGINES)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Backend, EventStore]]:
    backend = BACKEND_ENGINES[request.param](tmp_path)(backoff_base=0.01)
    store = open_event_store(backend)
    yield backend, store
    store.close()
    backend.close()


def kind() -> str:
    return f"k{uuid.uuid4().hex[:10]}"


def submit(backend: Backend, **fields: Any) -> Task:
    fields.setdefault("kind", kind())
    fields.setdefault("input", InputRef(bucket="input", key="a.mp4"))
    task, created = backend.submit(Task(**fields))
    assert created
    return task


def stream(store: EventStore, task_id: str | None = None) -> list[Event]:
    store.sequence()
    out: list[Event] = []
    since = 0
    while True:
        page = store.events_after(since, limit=100, task_id=task_id)
        if not page:
            return out
        out += page
        since = page[-1].seq


def types(store: EventStore, task_id: str) -> list[str]:
    return [e.type.value for e in stream(store, task_id)]


def settings(**kw: Any) -> EventSettings:
    kw.setdefault("allow_cidrs", "127.0.0.1/32")
    kw.setdefault("backoff_base_s", 0.05)
    kw.setdefault("backoff_max_s", 0.2)
    kw.setdefault("poll_s", 0.05)
    return EventSettings(**kw)


def subscribe(store: EventStore, url: str, **kw: Any) -> Endpoint:
    ep = Endpoint(
        id=new_endpoint_id(),
        url=url,
        secret=signing.new_secret(),
        created_at=datetime.now(UTC),
        **kw,
    )
    store.add_endpoint(ep)
    return ep


# -- the outbox ------------------------------------------------------------------------
def test_every_state_change_writes_its_event(engine: tuple[Backend, EventStore]) -> None:
    backend, store = engine
    t = submit(backend, submitted_by="alice", external_id="ext-1", metadata={"a": [1, "二"]})
    k = t.kind
    [c] = backend.claim("w1", [k], 1, 30)
    backend.fail(c.lease, "disk full", retryable=True)
    time.sleep(0.05)
    [c] = backend.claim("w2", [k], 1, 30)
    out = OutputFile(name="mp4", bucket="output", key="a/out.mp4", size=3)
    backend.complete(c.lease, [out])
    assert types(store, t.id) == ["queued", "started", "retrying", "started", "completed"]
    events = stream(store, t.id)
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    assert len({e.id for e in events}) == 5
    queued, started, retrying, _, completed = (e.payload()["data"] for e in events)
    assert queued["status"] == "pending" and queued["kind"] == k
    for data in (queued, started, retrying, completed):  # every event carries the caller's data
        assert data["external_id"] == "ext-1" and data["metadata"] == {"a": [1, "二"]}
    assert started["attempt"] == 1 and started["worker_id"] == "w1"
    assert retrying["error"] == "disk full" and retrying["attempt"] == 1
    assert completed["outputs"] == [
        {"name": "mp4", "bucket": "output", "key": "a/out.mp4", "size": 3, "content_type": None}
    ]
    assert all(e.submitted_by == "alice" for e in events)

    # failed for good, retried by an operator, cancelled while pending
    t2 = submit(backend, max_attempts=1)
    [c] = backend.claim("w1", [t2.kind], 1, 30)
    backend.fail(c.lease, "bad input", retryable=False)
    backend.retry(t2.id)
    backend.cancel(t2.id)
    assert types(store, t2.id) == ["queued", "started", "failed", "queued", "cancelled"]
    # a release (a worker shutting down) puts it back without counting: queued again
    t3 = submit(backend)
    [c] = backend.claim("w1", [t3.kind], 1, 30)
    backend.release(c.lease)
    assert types(store, t3.id) == ["queued", "started", "queued"]
    # a cancel request on a running task changes no state: no event until it ends
    [c] = backend.claim("w1", [t3.kind], 1, 30)
    backend.cancel(t3.id)
    assert types(store, t3.id) == ["queued", "started", "queued", "started"]


@contextmanager
def outbox_fault(backend: Backend) -> Iterator[str]:
    """Make every outbox insert fail inside the engine's transaction, then mend it; gives
    what the failed state change's error says."""
    from conveyor.backends.aws import AWSBackend
    from conveyor.backends.postgres import PostgresBackend
    from conveyor.backends.sqlite import SQLiteBackend

    if isinstance(backend, AWSBackend):
        # the event rides in the task item's put (or the transaction that writes it);
        # an outbox the server rejects makes it reject the whole write
        def fault(params: dict[str, Any], **_: Any) -> None:
            items = [params.get("Item") or {}] + [
                (op.get("Put") or {}).get("Item") or {} for op in params.get("TransactItems", [])
            ]
            for item in items:
                if "outbox" in item:
                    item["outbox"] = {"SS": []}  # an empty set: invalid

        hooks = backend._ddb.meta.events
        names = ["PutItem", "TransactWriteItems"]
        for name in names:
            hooks.register(f"before-parameter-build.dynamodb.{name}", fault)
        try:
            yield "ValidationException"
        finally:
            for name in names:
                hooks.unregister(f"before-parameter-build.dynamodb.{name}", fault)
    elif isinstance(backend, SQLiteBackend):
        conn = sqlite3.connect(backend.path, isolation_level=None)
        conn.execute(
            "CREATE TRIGGER outbox_fault BEFORE INSERT ON events "
            "BEGIN SELECT RAISE(ABORT, 'injected outbox fault'); END"
        )
        try:
            yield "injected outbox fault"
        finally:
            conn.execute("DROP TRIGGER outbox_fault")
            conn.close()
    elif isinstance(backend, PostgresBackend):
        import psycopg

        with psycopg.connect(backend.conninfo, autocommit=True) as conn:
            conn.execute(
                "CREATE FUNCTION outbox_fault() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'injected outbox fault'; END $$"
            )
            conn.execute(
                "CREATE TRIGGER outbox_fault BEFORE INSERT ON events "
                "FOR EACH ROW EXECUTE FUNCTION outbox_fault()"
            )
            try:
                yield "injected outbox fault"
            finally:
                conn.execute("DROP TRIGGER outbox_fault ON events")
                conn.execute("DROP FUNCTION outbox_fault()")
    else:  # pragma: no cover - a new engine adds its fault here
        pytest.fail(f"no outbox fault for {type(backend).__name__}")


def test_a_fault_in_the_outbox_write_loses_neither(engine: tuple[Backend, EventStore]) -> None:
    """The state change and its event are one transaction: when writing the event fails,
    the state change is not made either, and once mended both are made."""
    backend, store = engine
    k = kind()
    with outbox_fault(backend) as says, pytest.raises(Exception, match=says):
        backend.submit(Task(kind=k, input=InputRef(bucket="input", key="a.mp4")))
    assert backend.list(kind=k).items == []
    assert stream(store) == []

    t = submit(backend, kind=k)
    with outbox_fault(backend) as says, pytest.raises(Exception, match=says):
        backend.claim("w1", [k], 1, 30)
    after = backend.get(t.id)
    assert after is not None and after.status == TaskStatus.PENDING and after.attempts == 0
    assert types(store, t.id) == ["queued"]

    [c] = backend.claim("w1", [k], 1, 30)
    with outbox_fault(backend) as says, pytest.raises(Exception, match=says):
        backend.complete(c.lease, [])
    after = backend.get(t.id)
    assert after is not None and after.status == TaskStatus.PROCESSING
    assert types(store, t.id) == ["queued", "started"]

    with outbox_fault(backend) as says, pytest.raises(Exception, match=says):
        backend.fail(c.lease, "x", retryable=False)
    after = backend.get(t.id)
    assert after is not None and after.status == TaskStatus.PROCESSING

    backend.complete(c.lease, [])
    after = backend.get(t.id)
    assert after is not None and after.status == TaskStatus.COMPLETED
    assert types(store, t.id) == ["queued", "started", "completed"]

    t2 = submit(backend)
    with outbox_fault(backend) as says, pytest.raises(Exception, match=says):
        backend.cancel(t2.id)
    after = backend.get(t2.id)
    assert after is not None and after.status == TaskStatus.PENDING
    backend.cancel(t2.id)
    assert types(store, t2.id) == ["queued", "cancelled"]


def test_the_stream_never_skips_an_event_committed_late(engine: tuple[Backend, EventStore]) -> None:
    """Writers on several threads while a reader follows ``seq > since``: the reader sees
    every event once, in increasing ``seq``."""
    backend, store = engine
    k = kind()
    n_threads, per_thread = 4, 25
    stop = threading.Event()
    seen: list[Event] = []

    def read() -> None:
        since = 0
        while True:
            done = stop.is_set()
            store.sequence()
            page = store.events_after(since, limit=50, kinds=[k])
            seen.extend(page)
            if page:
                since = page[-1].seq
            elif done:
                return
            else:
                time.sleep(0.005)

    def write() -> None:
        for _ in range(per_thread):
            submit(backend, kind=k)

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=write) for _ in range(n_threads)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    stop.set()
    reader.join()
    assert len(seen) == n_threads * per_thread
    assert len({e.id for e in seen}) == len(seen)
    assert [e.seq for e in seen] == sorted({e.seq for e in seen})
    # filters: by kind (above), by status, by submitter
    assert store.events_after(0, statuses=["processing"], kinds=[k]) == []
    assert len(store.events_after(0, kinds=[k], limit=1000)) == len(seen)


# -- endpoints and the delivery log ------------------------------------------------------
def test_endpoints_and_the_delivery_log(engine: tuple[Backend, EventStore]) -> None:
    backend, store = engine
    sub = subscribe(store, "https://example.com/a", events=["completed"], kinds=["x"])
    t = submit(backend)
    own = subscribe(store, "https://example.com/b", task_id=t.id)
    other = subscribe(store, "https://example.com/c", task_id="someoneelse")
    got = store.get_endpoint(sub.id)
    assert got is not None and got.secret == sub.secret and got.events == ["completed"]
    assert {e.id for e in store.endpoints()} == {sub.id}
    assert {e.id for e in store.endpoints(task_ids=[t.id])} == {sub.id, own.id}
    assert other.id not in {e.id for e in store.endpoints(task_ids=[t.id])}

    d = Dispatcher(store, settings())
    try:
        d.store.sequence()
        assert d.fan_out() == 1  # the queued event: only the task's own webhook wants it
        page = store.deliveries(task_id=t.id)
        assert [(x.endpoint_id, x.event_type, x.state) for x in page.items] == [
            (own.id, "queued", DeliveryState.PENDING)
        ]
        assert d.fan_out() == 0  # fanned out once
        now = datetime.now(UTC)
        [claimed] = store.claim_deliveries(now, 60, 10)
        assert store.claim_deliveries(now, 60, 10) == []  # leased
        store.record_attempt(
            claimed.id,
            state=DeliveryState.FAILED,
            at=now,
            next_at=None,
            status=500,
            error=None,
            latency_ms=3.5,
            body="x" * 10,
        )
        log = store.get_delivery(claimed.id)
        assert log is not None and log.state == DeliveryState.FAILED
        assert (log.attempts, log.last_status, log.last_latency_ms) == (1, 500, 3.5)
        again = store.redeliver(claimed.id, now)
        assert again is not None and again.state == DeliveryState.PENDING
        assert [x.id for x in store.claim_deliveries(now, 60, 10)] == [claimed.id]
        assert store.deliveries(endpoint_id=own.id).items[0].id == claimed.id
        assert store.delete_endpoint(own.id)
        assert store.get_endpoint(own.id) is None
        assert store.deliveries(endpoint_id=own.id).items == []
        assert not store.delete_endpoint(own.id)
    finally:
        d.stop()


def test_delivery_log_pages(engine: tuple[Backend, EventStore]) -> None:
    backend, store = engine
    ep = subscribe(store, "https://example.com/a")
    for _ in range(7):
        submit(backend)
    d = Dispatcher(store, settings())
    try:
        store.sequence()
        d.fan_out()
    finally:
        d.stop()
    ids: list[str] = []
    cursor = None
    while True:
        page = store.deliveries(endpoint_id=ep.id, limit=3, cursor=cursor)
        ids += [x.id for x in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(ids) == len(set(ids)) == 7
    seqs = [x.event_seq for x in store.deliveries(endpoint_id=ep.id, limit=50).items]
    assert seqs == sorted(seqs, reverse=True)


# -- the dispatcher ----------------------------------------------------------------------
def run_until(d: Dispatcher, done: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "dispatcher did not finish in time"
        if not d.run_once():
            time.sleep(0.02)


def test_dispatcher_delivers_every_event_at_least_once_in_order_per_task(
    engine: tuple[Backend, EventStore],
) -> None:
    """Every third try of every event answered 500 (the first, for a third of them):
    each event is taken, signed, and one task's events arrive in the order they
    happened."""
    backend, store = engine
    receiver = Receiver(answer=lambda msg_id, n: 500 if n == 0 and hash(msg_id) % 3 == 0 else 200)
    receiver.start()
    try:
        ep = subscribe(store, receiver.url)
        k = kind()
        tasks = [submit(backend, kind=k) for _ in range(12)]
        for i, c in enumerate(backend.claim("w1", [k], 12, 30)):
            if i % 4 == 3:
                backend.fail(c.lease, "nope", retryable=False)
            else:
                backend.complete(c.lease, [])
        expected = {e.id: e for t in tasks for e in stream(store, t.id)}
        assert len(expected) == 36
        d = Dispatcher(store, settings())
        try:
            run_until(
                d, lambda: {r.headers["webhook-id"] for r in receiver.taken()} >= set(expected)
            )
        finally:
            d.stop()
        taken = receiver.taken()
        assert any(r.answered == 500 for r in receiver.snapshot())  # retries happened
        by_task: dict[str, list[int]] = {}
        for r in taken:
            msg_id = r.headers["webhook-id"]
            assert signing.verify(
                ep.secret,
                msg_id,
                int(r.headers["webhook-timestamp"]),
                r.body,
                r.headers["webhook-signature"],
            )
            e = expected[msg_id]
            if expected[msg_id].seq not in by_task.setdefault(e.task_id, []):
                by_task[e.task_id].append(e.seq)
        for t in tasks:
            assert by_task[t.id] == sorted(by_task[t.id]), f"task {t.id} out of order"
            assert len(by_task[t.id]) == 3
        states = {x.state for x in store.deliveries(endpoint_id=ep.id, limit=100).items}
        assert states == {DeliveryState.DELIVERED}
    finally:
        receiver.stop()


def test_a_dispatcher_that_dies_mid_delivery_is_taken_over(
    engine: tuple[Backend, EventStore],
) -> None:
    """A dispatcher claims deliveries and dies before recording them: once their lease
    ends, another dispatcher sends them (at least once, same event id)."""
    backend, store = engine
    receiver = Receiver().start()
    try:
        subscribe(store, receiver.url)
        t = submit(backend)
        dead = Dispatcher(store, settings())
        store.sequence()
        dead.fan_out()
        # then it dies (a lease long enough for a pass on a remote engine: ~0.3 s on moto)
        lease_s = 2.0
        leased_until = time.monotonic() + lease_s
        [claimed] = store.claim_deliveries(datetime.now(UTC), lease_s, 10)
        dead.stop()
        alive = Dispatcher(store, settings())
        try:
            assert alive.run_once() == 0  # still leased
            assert time.monotonic() < leased_until, "the pass took longer than the lease"
            time.sleep(max(0.0, leased_until - time.monotonic()) + 0.1)
            run_until(alive, lambda: len(receiver.taken()) == 1)
        finally:
            alive.stop()
        [event] = stream(store, t.id)
        assert receiver.taken()[0].headers["webhook-id"] == event.id
        log = store.get_delivery(claimed.id)
        assert log is not None and log.state == DeliveryState.DELIVERED
    finally:
        receiver.stop()


def test_retries_give_up_after_max_age_and_the_next_event_goes(
    engine: tuple[Backend, EventStore],
) -> None:
    backend, store = engine
    receiver = Receiver(answer=lambda msg_id, n: 503).start()
    try:
        ep = subscribe(store, receiver.url)
        t = submit(backend)
        [c] = backend.claim("w1", [t.kind], 1, 30)
        d = Dispatcher(store, settings(max_age_s=1.5))  # a pass on moto: ~0.3 s
        try:
            run_until(
                d,
                lambda: (
                    all(
                        x.state == DeliveryState.FAILED
                        for x in store.deliveries(endpoint_id=ep.id).items
                    )
                    and len(store.deliveries(endpoint_id=ep.id).items) == 2
                ),
            )
        finally:
            d.stop()
        logs = store.deliveries(task_id=t.id).items
        assert [x.event_type for x in logs] == ["queued", "started"]
        # the first is tried until its age runs out; the second waited behind it (order)
        assert logs[0].attempts >= 2 and logs[1].attempts >= 1
        assert all(x.last_status == 503 for x in logs)
        assert all(x.last_body is not None and len(x.last_body) <= 1024 for x in logs)
        assert c.lease.task_id == t.id
    finally:
        receiver.stop()


def test_refused_addresses_are_not_contacted(engine: tuple[Backend, EventStore]) -> None:
    """An endpoint whose address the policy refuses at delivery time (DNS changed since)
    is recorded as a failed try naming the rule; nothing is sent."""
    backend, store = engine
    subscribe(store, "http://10.0.0.1:9/hook")
    t = submit(backend)
    d = Dispatcher(store, settings(allow_cidrs=""))
    try:
        store.sequence()
        d.fan_out()
        d.run_once()
    finally:
        d.stop()
    [log] = store.deliveries(task_id=t.id).items
    assert log.state == DeliveryState.PENDING and log.attempts == 1
    assert log.last_status is None and "private address" in (log.last_error or "")


def test_prune_keeps_what_is_pending(engine: tuple[Backend, EventStore]) -> None:
    backend, store = engine
    subscribe(store, "https://example.com/a")
    submit(backend)
    d = Dispatcher(store, settings())
    try:
        store.sequence()
        d.fan_out()
    finally:
        d.stop()
    future = datetime.now(UTC) + timedelta(days=1)
    store.prune(future)
    assert len(stream(store)) == 1  # its delivery is pending: kept


# -- caller data on tasks (every engine, the remote one's store half included) -----------
def test_external_id_and_metadata_are_kept_and_filtered(backend: Backend) -> None:
    meta = {"order": 17, "tags": ["a", "b"], "nested": {"ok": True}, "note": "中文"}
    t = submit(backend, external_id="order-17", metadata=meta)
    submit(backend, kind=t.kind, external_id="order-18")
    submit(backend, kind=t.kind)
    got = backend.get(t.id)
    assert got is not None and got.external_id == "order-17" and got.metadata == meta
    page = backend.list(external_id="order-17")
    assert [x.id for x in page.items] == [t.id]
    assert page.items[0].metadata == meta
    assert [x.id for x in backend.list(external_id="order-17", kind=t.kind).items] == [t.id]
    assert backend.list(external_id="nope").items == []
    assert len(backend.list(kind=t.kind).items) == 3


def test_prune_never_gives_a_seq_twice(engine: tuple[Backend, EventStore]) -> None:
    """The prune keeps the newest event, so the stream's next seq is still past every
    seq a client may hold (a reader resuming with since=N never misses the next one)."""
    backend, store = engine
    for _ in range(3):
        submit(backend)
    d = Dispatcher(store, settings())
    try:
        store.sequence()
        assert d.fan_out() == 3  # no endpoints: nothing to deliver, the cursor moves
    finally:
        d.stop()
    newest = stream(store)[-1].seq
    store.prune(datetime.now(UTC) + timedelta(days=1))
    assert [e.seq for e in stream(store)] == [newest]
    submit(backend)
    assert [e.seq for e in stream(store)][-1] > newest
    assert len(store.events_after(newest)) == 1


def test_progress_events_are_off_by_default_and_throttled(
    engine: tuple[Backend, EventStore],
) -> None:
    from conveyor.models import Progress

    backend, store = engine
    t = submit(backend)
    [c] = backend.claim("w1", [t.kind], 1, 30)
    backend.progress(c.lease, Progress(percent=10, phase="transcode"))
    assert types(store, t.id) == ["queued", "started"]  # off by default
    store.set_progress_interval(0.3)
    backend.progress(c.lease, Progress(percent=20, phase="transcode"))
    backend.progress(c.lease, Progress(percent=30, phase="transcode"))  # too soon: none
    time.sleep(0.35)
    backend.progress(c.lease, Progress(percent=40, phase="transcode"))
    backend.complete(c.lease, [])
    events = stream(store, t.id)
    assert [e.type.value for e in events] == [
        "queued",
        "started",
        "progress",
        "progress",
        "completed",
    ]
    got = [e.payload()["data"]["progress"]["percent"] for e in events if e.type.value == "progress"]
    assert got == [20, 40]
    store.set_progress_interval(0)
    t2 = submit(backend)
    [c] = backend.claim("w1", [t2.kind], 1, 30)
    backend.progress(c.lease, Progress(percent=50))
    assert types(store, t2.id) == ["queued", "started"]


def test_every_engine_keeps_events_or_says_it_does_not(
    backend: Backend, backend_engine: str
) -> None:
    """SQLite, PostgreSQL and DynamoDB keep events; an engine that does not (the remote
    engine's worker half) answers events_unavailable (501), never a crash."""
    from conveyor.service.events import EventsService, EventsUnavailable

    events = EventsService(lambda: open_event_store(backend))
    try:
        if backend_engine in ("sqlite", "postgres", "aws"):
            assert events.available and events.subscriptions() == []
        else:
            assert not events.available
            with pytest.raises(EventsUnavailable, match="not available on this engine") as err:
                events.subscriptions()
            assert err.value.http_status == 501
    finally:
        events.close()
