"""A webhook delivery has a total deadline, not only a per-read timeout.

httpx's timeouts are per read: a receiver that sends its answer one byte per second
never trips them and would hold a delivery, and the dispatcher thread sending it,
for as long as it likes.  These receivers, on 127.0.0.1 (allowed for the test like an
admin's CIDR list would), drip their answer a byte a second; the dispatcher must give
up after ``timeout_s`` in all, record a readable reason, and try again later.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from conveyor.backends.events_base import EventStore, open_event_store
from conveyor.backends.sqlite import SQLiteBackend
from conveyor.events import signing
from conveyor.events.dispatcher import Dispatcher
from conveyor.events.model import DeliveryState, Endpoint, new_endpoint_id
from conveyor.events.settings import EventSettings
from conveyor.models import InputRef, Task

ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 40\r\n\r\n" + b"y" * 40


class DripReceiver:
    """Reads a request, then sends ``ANSWER`` one byte per ``every_s`` from byte
    ``from_byte`` on (before it, at once): 0 drips the status line, the header's end
    drips only the body."""

    def __init__(self, from_byte: int, every_s: float = 1.0) -> None:
        self.from_byte = from_byte
        self.every_s = every_s
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.requests = 0
        self.stopped = threading.Event()
        self.sent_bytes: list[int] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            self.requests += 1
            sent = 0
            try:
                conn.sendall(ANSWER[: self.from_byte])
                sent = self.from_byte
                for i in range(self.from_byte, len(ANSWER)):
                    if self.stopped.wait(self.every_s):
                        return
                    conn.sendall(ANSWER[i : i + 1])
                    sent += 1
            except OSError:
                pass  # the dispatcher hung up
            finally:
                self.sent_bytes.append(sent)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def stop(self) -> None:
        self.stopped.set()
        self.sock.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[SQLiteBackend, EventStore]]:
    backend = SQLiteBackend(tmp_path / "conveyor.db")
    events = open_event_store(backend)
    yield backend, events
    events.close()
    backend.close()


@pytest.mark.parametrize(
    ("from_byte", "delivered"),
    [(0, False), (ANSWER.index(b"\r\n\r\n") + 4, True)],
    ids=["drips-status-line", "drips-body"],
)
def test_a_slow_drip_receiver_is_cut_off_at_the_deadline(
    store: tuple[SQLiteBackend, EventStore], from_byte: int, delivered: bool
) -> None:
    """A receiver dripping its status line one byte per second: the delivery ends after
    ``timeout_s`` (2 s here) with "no complete answer within 2 s", pending for a retry;
    one that answered 200 at once and drips its body: delivered, cut at the deadline."""
    backend, events = store
    receiver = DripReceiver(from_byte)
    try:
        ep = Endpoint(
            id=new_endpoint_id(),
            url=receiver.url,
            secret=signing.new_secret(),
            created_at=datetime.now(UTC),
        )
        events.add_endpoint(ep)
        task, _ = backend.submit(Task(kind="drip", input=InputRef(bucket="i", key="a.mp4")))
        settings = EventSettings(allow_cidrs="127.0.0.1/32", timeout_s=2.0, backoff_base_s=60)
        d = Dispatcher(events, settings)
        try:
            events.sequence()
            d.fan_out()
            started = time.monotonic()
            [claimed] = events.claim_deliveries(datetime.now(UTC), 60, 10)
            [attempt] = d.deliver([claimed])
            took = time.monotonic() - started
        finally:
            d.stop()
        print(f"\n{receiver.url} from byte {from_byte}: the delivery ended after {took:.2f} s")
        assert receiver.requests == 1
        assert 1.9 <= took < 3.5, f"the delivery took {took:.2f} s, its deadline is 2 s"
        # the receiver was cut off mid-answer: it could not send all of it
        deadline = time.monotonic() + 5
        while not receiver.sent_bytes and time.monotonic() < deadline:
            time.sleep(0.05)
        assert receiver.sent_bytes and receiver.sent_bytes[0] < len(ANSWER)
        log = events.get_delivery(claimed.id)
        assert log is not None and log.attempts == 1
        if delivered:
            assert attempt.state == DeliveryState.DELIVERED and log.last_status == 200
        else:
            assert attempt.state == DeliveryState.PENDING and log.last_status is None
            assert log.last_error == "no complete answer within 2 s"
            assert log.next_at is not None and log.next_at > datetime.now(UTC)
        assert log.task_id == task.id
    finally:
        receiver.stop()
