"""Webhooks cannot be turned against the server's own network (issue 19, docs/events.md).

A webhook makes the server send requests where a caller says.  These tests show that
the address policy holds where it matters, at delivery time: a name that resolved to
an allowed address at subscription and resolves to a refused one later (DNS
rebinding) is refused and nothing is sent; a delivery connects to the address that
was checked, never resolving the name a second time; a redirect to another address
is not followed; secrets and signatures never reach the log.

The resolver is the one fault injected (a DNS server that changes its answer cannot
be had otherwise here); the receivers are real servers on loopback addresses, the
policy allowing only 127.0.0.2/32.
"""

from __future__ import annotations

import logging
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
from conveyor.events.policy import AddressPolicy, WebhookRefused
from conveyor.events.settings import EventSettings
from conveyor.models import Task
from tests.webhook_receiver import Receiver

ALLOWED = "127.0.0.2/32"


class FlippingDNS:
    """Answers ``first`` for ``hook.test`` until flipped, then ``then``."""

    def __init__(self, first: str, then: str) -> None:
        self.answer = first
        self.then = then
        self.asked = 0

    def flip(self) -> None:
        self.answer = self.then

    def __call__(self, host: str, port: int) -> list[str]:
        assert host == "hook.test", host
        self.asked += 1
        return [self.answer]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[SQLiteBackend, EventStore]]:
    backend = SQLiteBackend(tmp_path / "c.db")
    events = open_event_store(backend)
    yield backend, events
    events.close()
    backend.close()


def subscribe(events: EventStore, url: str) -> Endpoint:
    ep = Endpoint(
        id=new_endpoint_id(), url=url, secret=signing.new_secret(), created_at=datetime.now(UTC)
    )
    events.add_endpoint(ep)
    return ep


def deliver_once(d: Dispatcher) -> None:
    d.store.sequence()
    d.fan_out()
    d.run_once()


def test_dns_rebinding_is_refused_at_delivery_and_the_checked_address_is_used(
    store: tuple[SQLiteBackend, EventStore],
) -> None:
    backend, events = store
    allowed = Receiver(host="127.0.0.2").start()  # where hook.test points at first
    port_a = allowed.url.split(":")[2].split("/")[0]
    # where it points after the flip: the same port on an address the policy refuses
    refused = Receiver(host="127.0.0.1", port=int(port_a)).start()
    try:
        dns = FlippingDNS("127.0.0.2", "127.0.0.1")
        policy = AddressPolicy.from_cidrs([ALLOWED], resolver=dns)
        url = f"http://hook.test:{port_a}/hook"
        assert policy.resolve(url).address == "127.0.0.2"  # accepted at subscription
        subscribe(events, url)
        d = Dispatcher(events, EventSettings(backoff_base_s=0.05), policy=policy)
        try:
            backend.submit(Task(kind="k1"))
            deliver_once(d)
            # delivered to the address checked: hook.test resolves nowhere on this host,
            # so a second lookup by the HTTP client would have failed
            [got] = allowed.taken()
            assert got.headers["host"] == f"hook.test:{port_a}"
            dns.flip()  # now hook.test says 127.0.0.1, which the policy refuses
            backend.submit(Task(kind="k1"))
            deliver_once(d)
        finally:
            d.stop()
        assert refused.snapshot() == [] and len(allowed.snapshot()) == 1
        [log] = [x for x in events.deliveries(limit=10).items if x.state != DeliveryState.DELIVERED]
        assert log.state == DeliveryState.PENDING and log.last_status is None
        assert "hook.test (127.0.0.1) is a loopback address" in (log.last_error or "")
        with pytest.raises(WebhookRefused, match="loopback"):
            policy.resolve(url)  # and a new subscription is refused outright
    finally:
        allowed.stop()
        refused.stop()


def test_redirects_are_not_followed(store: tuple[SQLiteBackend, EventStore]) -> None:
    backend, events = store
    target = Receiver(host="127.0.0.2").start()  # allowed, but only named by a redirect
    hop = Receiver(host="127.0.0.2", answer=lambda msg_id, n: 307, location=target.url).start()
    try:
        subscribe(events, hop.url)
        d = Dispatcher(events, EventSettings(allow_cidrs=ALLOWED, backoff_base_s=0.05))
        try:
            backend.submit(Task(kind="k1"))
            deliver_once(d)
        finally:
            d.stop()
        assert len(hop.snapshot()) == 1 and target.snapshot() == []
        [log] = events.deliveries(limit=10).items
        assert log.state == DeliveryState.PENDING and log.last_status == 307
    finally:
        hop.stop()
        target.stop()


def test_secrets_and_signatures_never_reach_the_log(
    store: tuple[SQLiteBackend, EventStore], caplog: pytest.LogCaptureFixture
) -> None:
    backend, events = store
    failing = Receiver(host="127.0.0.2", answer=lambda msg_id, n: 500 if n == 0 else 200)
    failing.start()
    try:
        ep = subscribe(events, failing.url)
        caplog.set_level(logging.DEBUG)
        d = Dispatcher(events, EventSettings(allow_cidrs=ALLOWED, backoff_base_s=0.01))
        try:
            backend.submit(Task(kind="k1"))
            deadline = time.monotonic() + 10
            while len(failing.taken()) < 1:
                assert time.monotonic() < deadline
                deliver_once(d)
                time.sleep(0.02)
        finally:
            d.stop()
        signature = failing.snapshot()[0].headers["webhook-signature"]
        text = "\n".join(r.getMessage() for r in caplog.records)
        assert "webhook delivery" in text  # the failed try was logged ...
        assert ep.secret not in text and ep.secret.removeprefix("whsec_") not in text
        assert signature not in text and signature.removeprefix("v1,") not in text
    finally:
        failing.stop()
