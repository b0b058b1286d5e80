"""The events' rules, for every face: webhook subscriptions (admins and operators),
a task's own webhook, the delivery log and redelivery, the event stream.

The outbox itself is the engine's (``backends/events_base.py``); the dispatcher that
sends it is ``conveyor.events.dispatcher``, run by the server's runtime.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from conveyor.backends.events_base import EventStore
from conveyor.errors import ConveyorError, InvalidRequest, NotFound
from conveyor.events import signing
from conveyor.events.model import (
    EVENT_TYPES,
    Delivery,
    DeliveryPage,
    Endpoint,
    Event,
    new_endpoint_id,
)
from conveyor.events.policy import AddressPolicy
from conveyor.events.settings import EventSettings

log = logging.getLogger(__name__)


class WebhookNotFound(NotFound):
    code = "webhook_not_found"


class DeliveryNotFound(NotFound):
    code = "delivery_not_found"


class EventsUnavailable(ConveyorError):
    """This engine keeps no events (yet)."""

    code = "events_unavailable"
    http_status = 501


class WebhookSpec(BaseModel):
    """A task's own webhook (``webhook`` on submit, or ``params.webhook``)."""

    url: str = Field(max_length=2048)
    events: list[str] = Field(default_factory=list, description="event types; none: every type")
    secret: str | None = Field(
        None,
        description="your own 'whsec_' secret to sign with; none: one is made and returned "
        "once, in the submit's answer (webhook_secret)",
    )


class WebhookCreate(BaseModel):
    url: str = Field(max_length=2048)
    events: list[str] = Field(default_factory=list, description="event types; none: every type")
    kinds: list[str] = Field(default_factory=list, description="task kinds; none: every kind")
    description: str = Field("", max_length=200)


class WebhookView(BaseModel):
    id: str
    url: str
    events: list[str]
    kinds: list[str]
    description: str
    task_id: str | None
    created_at: datetime
    created_by: str | None

    @classmethod
    def of(cls, ep: Endpoint) -> WebhookView:
        return cls(**ep.model_dump(exclude={"secret"}))


class WebhookCreated(WebhookView):
    secret: str = Field(description="shown this once: verify deliveries with it")


class EventsService:
    def __init__(
        self,
        open_store: Callable[[], EventStore],
        settings: EventSettings | None = None,
        *,
        kinds: Callable[[], list[str]] | None = None,
    ) -> None:
        self.settings = settings or EventSettings()
        self.policy = AddressPolicy.from_cidrs(self.settings.cidrs())
        self._open_store = open_store
        self._store: EventStore | None = None
        self._unavailable: str | None = None
        self._lock = threading.Lock()
        self._kinds = kinds

    # -- the store ---------------------------------------------------------------------
    @property
    def store(self) -> EventStore:
        with self._lock:
            if self._store is None and self._unavailable is None:
                try:
                    self._store = self._open_store()
                except NotImplementedError as exc:
                    self._unavailable = str(exc)
            if self._store is None:
                raise EventsUnavailable(
                    f"events are not available on this engine ({self._unavailable}); "
                    "SQLite, PostgreSQL and AWS keep them"
                )
            return self._store

    @property
    def available(self) -> bool:
        try:
            _ = self.store
        except EventsUnavailable:
            return False
        return True

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    # -- checks ------------------------------------------------------------------------
    def check_events(self, events: list[str]) -> list[str]:
        unknown = [e for e in events if e not in EVENT_TYPES]
        if unknown:
            raise InvalidRequest(
                f"unknown event type(s) {', '.join(unknown)}; use {', '.join(EVENT_TYPES)}"
            )
        return list(dict.fromkeys(events))

    def check_kinds(self, kinds: list[str]) -> list[str]:
        known = self._kinds() if self._kinds is not None else None
        if known is not None:
            unknown = [k for k in kinds if k not in known]
            if unknown:
                raise InvalidRequest(
                    f"unknown kind(s) {', '.join(unknown)}; installed: {', '.join(known)}"
                )
        return list(dict.fromkeys(kinds))

    def check_url(self, url: str) -> str:
        """The URL, once its form and every address it resolves to pass the policy."""
        self.policy.resolve(url.strip())
        return url.strip()

    # -- subscriptions -----------------------------------------------------------------
    def create(self, body: WebhookCreate, *, created_by: str | None) -> WebhookCreated:
        events, kinds = self.check_events(body.events), self.check_kinds(body.kinds)
        ep = Endpoint(
            id=new_endpoint_id(),
            url=self.check_url(body.url),
            events=events,
            kinds=kinds,
            description=body.description,
            created_at=datetime.now(UTC),
            created_by=created_by,
            secret=signing.new_secret(),
        )
        self.store.add_endpoint(ep)
        log.info("webhook %s created for %s", ep.id, ep.url)
        return WebhookCreated(**WebhookView.of(ep).model_dump(), secret=ep.secret)

    def subscriptions(self) -> list[WebhookView]:
        return [WebhookView.of(ep) for ep in self.store.endpoints()]

    def get(self, endpoint_id: str) -> WebhookView:
        ep = self.store.get_endpoint(endpoint_id)
        if ep is None:
            raise WebhookNotFound(f"webhook {endpoint_id} not found")
        return WebhookView.of(ep)

    def delete(self, endpoint_id: str) -> None:
        if not self.store.delete_endpoint(endpoint_id):
            raise WebhookNotFound(f"webhook {endpoint_id} not found")

    # -- a task's own webhook -------------------------------------------------------------
    def task_webhook(self, raw: Any) -> tuple[Endpoint, str | None]:
        """A checked endpoint for a task's ``webhook`` (not stored yet), and the secret to
        show the caller (None when the caller gave its own)."""
        if isinstance(raw, str):
            raw = {"url": raw}
        try:
            spec = WebhookSpec.model_validate(raw)
        except ValueError as exc:
            raise InvalidRequest(f"webhook: {exc}") from None
        secret = signing.check_secret(spec.secret) if spec.secret else signing.new_secret()
        events = self.check_events(spec.events)
        ep = Endpoint(
            id=new_endpoint_id(),
            url=self.check_url(spec.url),
            events=events,
            created_at=datetime.now(UTC),
            secret=secret,
        )
        return ep, None if spec.secret else secret

    def attach(self, endpoint: Endpoint, task_id: str, created_by: str | None) -> None:
        """Store a task's webhook; before the task, so that its first event finds it."""
        self.store.add_endpoint(
            endpoint.model_copy(update={"task_id": task_id, "created_by": created_by})
        )

    def detach(self, endpoint: Endpoint) -> None:
        self.store.delete_endpoint(endpoint.id)

    # -- the delivery log -----------------------------------------------------------------
    def deliveries(
        self, endpoint_id: str, *, limit: int = 50, cursor: str | None = None
    ) -> DeliveryPage:
        self.get(endpoint_id)
        if cursor is not None and not _cursor_ok(cursor):
            raise InvalidRequest("invalid cursor: use next_cursor from the previous page")
        return self.store.deliveries(endpoint_id=endpoint_id, limit=limit, cursor=cursor)

    def task_deliveries(self, task_id: str, *, own_only: bool = False) -> list[Delivery]:
        """A task's deliveries to every endpoint, oldest first (the caller checked access).

        ``own_only``: to the task's own webhooks only; a submitter is not shown where the
        operators' subscriptions send events."""
        items = self.store.deliveries(task_id=task_id, limit=500).items
        if own_only:
            own = {
                ep.id for ep in self.store.endpoints(task_ids=[task_id]) if ep.task_id == task_id
            }
            items = [d for d in items if d.endpoint_id in own]
        return items

    def endpoints_of(self, deliveries: list[Delivery]) -> dict[str, WebhookView]:
        out: dict[str, WebhookView] = {}
        for d in deliveries:
            if d.endpoint_id not in out:
                ep = self.store.get_endpoint(d.endpoint_id)
                if ep is not None:
                    out[d.endpoint_id] = WebhookView.of(ep)
        return out

    def redeliver(self, delivery_id: str, *, endpoint_id: str | None = None) -> Delivery:
        d = self.store.get_delivery(delivery_id)
        if d is None or (endpoint_id is not None and d.endpoint_id != endpoint_id):
            raise DeliveryNotFound(f"delivery {delivery_id} not found")
        again = self.store.redeliver(delivery_id, datetime.now(UTC))
        if again is None:
            raise DeliveryNotFound(f"delivery {delivery_id} not found")
        return again

    # -- the stream ----------------------------------------------------------------------
    def stream(
        self,
        since: int,
        *,
        kinds: list[str] | None = None,
        statuses: list[str] | None = None,
        owner: str | None = None,
        limit: int = 200,
    ) -> list[Event]:
        """Events after ``since`` (a submitter's: its own tasks' only)."""
        self.store.sequence()  # the stream moves even where no dispatcher runs
        return self.store.events_after(
            since, limit=limit, kinds=kinds or None, statuses=statuses or None, submitted_by=owner
        )

    def last_seq(self) -> int:
        self.store.sequence()
        return self.store.last_seq()


def _cursor_ok(cursor: str) -> bool:
    seq, sep, rest = cursor.partition(":")
    return bool(sep) and seq.isdigit() and bool(rest)


def sse(event: Event) -> str:
    """One server-sent event: ``id`` is the stream position (Last-Event-ID resumes)."""
    return f"id: {event.seq}\nevent: {event.type.value}\ndata: {json.dumps(event.payload())}\n\n"
