"""The events' port: the outbox, webhook endpoints and deliveries, as an engine keeps them.

Every engine writes an event in the transaction of the state change that causes it
(SQL engines: a trigger on ``tasks``, created by their ``0005_events`` migration;
DynamoDB: the same ``TransactWriteItems``).  This port is what reads them and keeps
what the dispatcher does with them:

* ``sequence`` gives events written since the last call their place in the stream
  (``seq``) in the order they became visible; ``events_after(seq)`` pages the stream
  and never skips an event another transaction commits late.
* ``unfanned`` / ``fan_out``: sequenced events the dispatcher has not yet turned into
  deliveries (those after its cursor); ``fan_out`` inserts the deliveries and moves the
  cursor in one transaction, idempotently (one delivery per event and endpoint), so a
  crash between the two neither loses an event nor sends it twice to one endpoint.
  The cursor is a ``seq``: events are written with no index but their key, so that
  the state change that writes one pays as little as can be.
* ``claim_deliveries`` leases the deliveries that are due, at most one per endpoint
  and task (the oldest one not yet delivered or given up), so that one task's events
  reach an endpoint in order; a lease that expires (a dispatcher died mid-POST) makes
  the delivery due again: at least once.
* ``record_attempt`` records a try (delivered, failed, or pending with its next try).

The contract suite ``tests/contract/test_events_contract.py`` pins these on every engine.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from conveyor.events.model import Delivery, DeliveryPage, DeliveryState, Endpoint, Event

if TYPE_CHECKING:
    from conveyor.backends.base import Backend

__all__ = ["Attempt", "EventStore", "open_event_store"]


@dataclass(frozen=True)
class Attempt:
    """One try of one delivery, as the dispatcher records it."""

    delivery_id: str
    state: DeliveryState
    at: datetime
    next_at: datetime | None
    status: int | None
    error: str | None
    latency_ms: float | None
    body: str | None


class EventStore(ABC):
    # -- settings kept in the database --------------------------------------------------
    @abstractmethod
    def set_progress_interval(self, seconds: float) -> None:
        """Progress events: at most one per task per ``seconds`` (0: none).  Kept in the
        database because the engine writes them in the progress update's transaction."""

    # -- the stream ------------------------------------------------------------------
    def sequence(self) -> int:
        """Give new events their ``seq``; how many (engines whose insert order is their
        commit order need not)."""
        return 0

    @abstractmethod
    def events_after(
        self,
        seq: int,
        *,
        limit: int = 100,
        kinds: list[str] | None = None,
        statuses: list[str] | None = None,
        submitted_by: str | None = None,
        task_id: str | None = None,
    ) -> list[Event]:
        """Sequenced events with ``seq`` above ``seq``, oldest first."""

    @abstractmethod
    def last_seq(self) -> int:
        """The newest sequenced event's ``seq`` (0: none)."""

    @abstractmethod
    def events_by_seq(self, seqs: list[int]) -> dict[int, Event]: ...

    # -- fan-out ---------------------------------------------------------------------
    @abstractmethod
    def unfanned(self, limit: int = 500) -> list[Event]:
        """Sequenced events without their deliveries yet, oldest first."""

    @abstractmethod
    def fan_out(self, events: list[Event], deliveries: list[Delivery]) -> None:
        """Store ``deliveries`` (one per event and endpoint: a repeat is ignored) and move
        the cursor past ``events``, in one transaction."""

    # -- endpoints -------------------------------------------------------------------
    @abstractmethod
    def add_endpoint(self, endpoint: Endpoint) -> None: ...

    @abstractmethod
    def get_endpoint(self, endpoint_id: str) -> Endpoint | None: ...

    @abstractmethod
    def endpoints(self, *, task_ids: list[str] | None = None) -> list[Endpoint]:
        """Every subscription, and the task webhooks of ``task_ids``."""

    @abstractmethod
    def delete_endpoint(self, endpoint_id: str) -> bool:
        """Delete an endpoint and its deliveries; False when there was none."""

    # -- deliveries ------------------------------------------------------------------
    @abstractmethod
    def claim_deliveries(self, now: datetime, lease_s: float, limit: int) -> list[Delivery]:
        """Lease up to ``limit`` due deliveries (see the module docs) until ``now + lease_s``."""

    @abstractmethod
    def record_attempts(self, attempts: list[Attempt]) -> None:
        """One more try of each delivery: its outcome and, while pending, its next try
        (one transaction)."""

    def record_attempt(self, delivery_id: str, **outcome: Any) -> None:
        self.record_attempts([Attempt(delivery_id=delivery_id, **outcome)])

    @abstractmethod
    def get_delivery(self, delivery_id: str) -> Delivery | None: ...

    @abstractmethod
    def deliveries(
        self,
        *,
        endpoint_id: str | None = None,
        task_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> DeliveryPage:
        """The delivery log, newest event first (a task's: oldest first)."""

    @abstractmethod
    def redeliver(self, delivery_id: str, now: datetime) -> Delivery | None:
        """Make a delivery pending and due at ``now`` again (its try count kept)."""

    @abstractmethod
    def prune(self, before: datetime) -> int:
        """Drop fanned-out events and finished deliveries older than ``before``."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def open_event_store(backend: Backend) -> EventStore:
    """The event store kept in ``backend``'s database."""
    from conveyor.backends.postgres import PostgresBackend
    from conveyor.backends.sqlite import SQLiteBackend

    if isinstance(backend, SQLiteBackend):
        from conveyor.backends.sqlite.events import SQLiteEventStore

        return SQLiteEventStore(backend.path)
    if isinstance(backend, PostgresBackend):
        from conveyor.backends.postgres.events import PostgresEventStore

        return PostgresEventStore(backend.conninfo)
    opener = getattr(backend, "open_event_store", None)
    if opener is not None:
        store: EventStore = opener()
        return store
    raise NotImplementedError(f"{type(backend).__name__} keeps no events")
