"""The dispatcher: outbox rows become signed POSTs, retried until they are taken.

One loop, in every API process (several are safe: the store leases each delivery to
one of them):

1. ``sequence`` the events written since the last pass (their place in the stream);
2. fan them out: one delivery per event and endpoint that wants it (a subscription
   matching its type and kind, or the task's own webhook), stored with the events
   marked done in one transaction;
3. claim the deliveries that are due, at most one per endpoint and task (so one
   task's events reach an endpoint in order) and POST them, a few at a time.

A POST is signed (``signing``) with the endpoint's secret, goes to the address the
policy checked just before (``policy``: no second DNS lookup), follows no redirect and
keeps at most 1 KiB of the answer.  It gets ``timeout_s`` (10 s) in all: httpx's
timeouts are per read, so a receiver that drips a byte every few seconds would hold a
delivery (and its dispatcher thread) for ever; a timer shuts the connection's socket
down when the time is up (each POST has a connection of its own, so that socket is
known from the moment it is opened).  A status line received in time counts even if
the rest of the answer is cut.  A
2xx answer delivers it; anything else is tried again after ``backoff_base_s *
2^(tries-1)`` (at most ``backoff_max_s`` apart) until ``max_age_s`` (24 h) after the
event, then the delivery is given up (``failed``) and the next one of that task goes.
A dispatcher that dies mid-POST leaves its lease to expire: the delivery is sent
again (at least once; receivers de-duplicate on ``webhook-id``).  Secrets and
signatures are never logged.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from conveyor.backends.events_base import Attempt, EventStore
from conveyor.events import signing
from conveyor.events.model import Delivery, DeliveryState, Endpoint, Event, new_delivery_id
from conveyor.events.policy import AddressPolicy, Target, WebhookRefused
from conveyor.events.settings import EventSettings

log = logging.getLogger(__name__)

MAX_BODY = 1024  # bytes of a receiver's answer kept in the delivery log


def body_of(event: Event) -> bytes:
    """The exact bytes sent for ``event``: the same on every try."""
    return json.dumps(event.payload(), separators=(",", ":"), ensure_ascii=False).encode()


def backoff_s(settings: EventSettings, tries: int) -> float:
    return float(min(settings.backoff_base_s * (2 ** max(0, tries - 1)), settings.backoff_max_s))


def pinned_url(target: Target) -> str:
    """The URL with its host replaced by the checked address (the Host header and TLS
    name stay the host's)."""
    parts = urlsplit(target.url)
    ip = ipaddress.ip_address(target.address.split("%", 1)[0])
    host = f"[{ip}]" if ip.version == 6 else str(ip)
    return urlunsplit((parts.scheme, f"{host}:{target.port}", parts.path or "/", parts.query, ""))


class Dispatcher:
    def __init__(
        self,
        store: EventStore,
        settings: EventSettings | None = None,
        *,
        policy: AddressPolicy | None = None,
    ) -> None:
        self.store = store
        self.settings = settings or EventSettings()
        self.policy = policy or AddressPolicy.from_cidrs(self.settings.cidrs())
        self._client = httpx.Client(
            timeout=self.settings.timeout_s,
            follow_redirects=False,
            trust_env=False,  # a proxy from the environment would reach what the policy refused
            headers={"user-agent": "Conveyor-Webhooks/1"},
            # no connection kept: each POST opens its own, whose socket its deadline cuts
            limits=httpx.Limits(max_keepalive_connections=0),
        )
        self._pool = ThreadPoolExecutor(self.settings.concurrency, thread_name_prefix="webhook")
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_prune = 0.0

    # -- the loop --------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="event-dispatcher", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.timeout_s + 5)
            self._thread = None
        self._pool.shutdown(wait=True)
        self._client.close()

    def _run(self) -> None:
        failing_since: float | None = None
        said = 0.0
        while not self._stop.is_set():
            try:
                busy = self.run_once()
                if failing_since is not None:
                    log.info("event dispatcher working again")
                    failing_since = None
            except Exception as exc:  # the database is down, say: try again, never die
                busy = 0
                now = time.monotonic()
                if failing_since is None:  # once with the traceback, then once a minute
                    failing_since = said = now
                    log.exception("event dispatcher pass failed; retrying")
                elif now - said >= 60:
                    said = now
                    log.warning(
                        "event dispatcher still failing after %.0f s: %s", now - failing_since, exc
                    )
            if not busy:
                self._wake.wait(self.settings.poll_s)
                self._wake.clear()

    def run_once(self) -> int:
        """One pass: sequence, fan out, send what is due; how much it did."""
        self.store.sequence()
        done = self.fan_out()
        now = datetime.now(UTC)
        # a claimed delivery is due again after twice the timeout: its dispatcher died
        lease_s = 2 * self.settings.timeout_s + 5
        claimed = self.store.claim_deliveries(now, lease_s, self.settings.concurrency * 16)
        if claimed:
            self.deliver(claimed)
        if time.monotonic() - self._last_prune > 3600:
            self._last_prune = time.monotonic()
            self.store.prune(now - timedelta(days=self.settings.retention_days))
        return done + len(claimed)

    def fan_out(self) -> int:
        total = 0
        while True:
            events = self.store.unfanned(500)
            if not events:
                return total
            task_ids = sorted({e.task_id for e in events})
            endpoints = self.store.endpoints(task_ids=task_ids)
            now = datetime.now(UTC)
            deliveries = [
                Delivery(
                    id=new_delivery_id(),
                    event_id=e.id,
                    event_seq=e.seq,
                    event_type=e.type.value,
                    endpoint_id=ep.id,
                    task_id=e.task_id,
                    created_at=now,
                    next_at=now,
                )
                for e in events
                for ep in endpoints
                if ep.wants(e)
            ]
            self.store.fan_out(events, deliveries)
            total += len(events)

    # -- deliveries ------------------------------------------------------------------
    def deliver(self, claimed: list[Delivery]) -> list[Attempt]:
        """POST claimed deliveries (a few at a time) and record every try in one go."""
        events = self.store.events_by_seq([d.event_seq for d in claimed])
        endpoints = {i: self.store.get_endpoint(i) for i in {d.endpoint_id for d in claimed}}
        attempts = list(
            self._pool.map(
                lambda d: self._try(d, endpoints.get(d.endpoint_id), events.get(d.event_seq)),
                claimed,
            )
        )
        self.store.record_attempts(attempts)
        if any(a.state != DeliveryState.PENDING for a in attempts):
            self._wake.set()  # a task's next event to that endpoint may go now
        return attempts

    def _try(self, delivery: Delivery, endpoint: Endpoint | None, event: Event | None) -> Attempt:
        now = datetime.now(UTC)
        if endpoint is None or event is None:
            gone = "endpoint deleted" if endpoint is None else "event no longer kept"
            return Attempt(delivery.id, DeliveryState.FAILED, now, None, None, gone, None, None)
        status, error, latency_ms, answer = self.post(endpoint, event)
        at = datetime.now(UTC)
        if status is not None and 200 <= status < 300:
            return Attempt(
                delivery.id, DeliveryState.DELIVERED, at, None, status, None, latency_ms, answer
            )
        tries = delivery.attempts + 1
        next_at: datetime | None = at + timedelta(seconds=backoff_s(self.settings, tries))
        state = DeliveryState.PENDING
        assert next_at is not None
        if next_at > event.at + timedelta(seconds=self.settings.max_age_s):
            state, next_at = DeliveryState.FAILED, None
        log.info(
            "webhook delivery %s of %s to endpoint %s: %s (try %d)",
            delivery.id,
            event.id,
            endpoint.id,
            error or f"HTTP {status}",
            tries,
        )
        return Attempt(delivery.id, state, at, next_at, status, error, latency_ms, answer)

    def post(
        self, endpoint: Endpoint, event: Event
    ) -> tuple[int | None, str | None, float | None, str | None]:
        """``(status, error, latency ms, first KiB of the answer)`` of one signed POST."""
        try:
            target = self.policy.resolve(endpoint.url)
        except WebhookRefused as exc:
            return None, exc.message, None, None
        body = body_of(event)
        headers = signing.headers(endpoint.secret, event.id, int(time.time()), body)
        headers["host"] = (
            target.host if target.port in (80, 443) else f"{target.host}:{target.port}"
        )
        limit_s = self.settings.timeout_s
        deadline = _Deadline(limit_s)
        extensions: dict[str, Any] = {"trace": deadline.trace}
        if target.scheme == "https":
            extensions["sni_hostname"] = target.host
        started = time.perf_counter()
        status: int | None = None
        kept = b""
        try:
            with (
                deadline,
                self._client.stream(
                    "POST", pinned_url(target), content=body, headers=headers, extensions=extensions
                ) as resp,
            ):
                status = resp.status_code
                for chunk in resp.iter_bytes():
                    kept += chunk
                    if len(kept) >= MAX_BODY:
                        break
        except httpx.TimeoutException:
            if status is None:
                return None, f"no answer within {limit_s:g} s", None, None
        except httpx.HTTPError as exc:
            if status is None:
                if deadline.cut:
                    return None, f"no complete answer within {limit_s:g} s", None, None
                return None, f"{type(exc).__name__}: {exc}"[:500], None, None
        latency = (time.perf_counter() - started) * 1000
        return status, None, latency, kept[:MAX_BODY].decode("utf-8", "replace")


class _Deadline:
    """Shuts down one POST's socket ``limit_s`` after it starts (see the module docs).

    httpcore's ``trace`` hook hands over the TCP stream as soon as it is connected; a
    ``shutdown`` wakes a ``recv`` blocked in another thread, where ``close`` would not.
    """

    def __init__(self, limit_s: float) -> None:
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._timer = threading.Timer(limit_s, self._cut)
        self._timer.daemon = True
        self.cut = False

    def trace(self, name: str, info: dict[str, Any]) -> None:
        if name != "connection.connect_tcp.complete":
            return
        stream = info.get("return_value")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if isinstance(sock, socket.socket):
            with self._lock:
                self._socks.append(sock)
                if self.cut:  # connected after the time was up
                    self._shut(sock)

    def _cut(self) -> None:
        with self._lock:
            self.cut = True
            for sock in self._socks:
                self._shut(sock)

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
