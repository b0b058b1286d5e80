"""Events, webhook endpoints and deliveries: the records the outbox holds.

An event is written once, in the transaction that changed the task, and never
changes: its ``id`` is what a receiver de-duplicates on (delivery is at least once),
its ``seq`` is its place in the stream (``GET /api/events?since=<seq>``).
"""

from __future__ import annotations

import secrets
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


def new_delivery_id() -> str:
    return "dlv_" + secrets.token_hex(12)


def new_endpoint_id() -> str:
    return "whk_" + secrets.token_hex(12)


class EventType(StrEnum):
    QUEUED = "queued"
    STARTED = "started"
    PROGRESS = "progress"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


EVENT_TYPES = [t.value for t in EventType]


class Event(BaseModel):
    """One state change of one task, as the outbox holds it."""

    id: str
    seq: int = 0  # its place in the stream; 0 until the store has sequenced it
    type: EventType
    task_id: str
    kind: str
    status: str
    at: datetime
    submitted_by: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        """The body a receiver gets (Standard Webhooks' ``type``/``timestamp``/``data``).

        Built from the stored row only, so every retry of a delivery sends the same
        bytes.  Outputs are named by their final key; where an attempt staged them is
        the service's business, not the receiver's.
        """
        d = self.data
        data: dict[str, Any] = {
            "task_id": self.task_id,
            "kind": self.kind,
            "status": self.status,
            "external_id": d.get("external_id"),
            "metadata": d.get("metadata") or {},
        }
        if self.type in (EventType.STARTED, EventType.RETRYING):
            data["attempt"] = d.get("attempt")
            data["worker_id"] = d.get("worker_id")
        if self.type in (EventType.RETRYING, EventType.FAILED, EventType.CANCELLED):
            data["error"] = d.get("error")
            data["error_code"] = d.get("error_code")
        if self.type == EventType.COMPLETED:
            data["outputs"] = [
                {k: o.get(k) for k in ("name", "bucket", "key", "size", "content_type")}
                for o in (d.get("outputs") or [])
                if isinstance(o, dict)
            ]
        if self.type == EventType.PROGRESS:
            data["progress"] = d.get("progress") or {}
        return {
            "id": self.id,
            "seq": self.seq,
            "type": self.type.value,
            "timestamp": self.at.isoformat().replace("+00:00", "Z"),
            "data": data,
        }


class DeliveryState(StrEnum):
    PENDING = "pending"  # waiting for its (next) try
    DELIVERED = "delivered"  # a 2xx answer
    FAILED = "failed"  # given up: retries ran out (24 h by default)


class Endpoint(BaseModel):
    """Where events go: a subscription (``task_id`` None) or one task's own webhook."""

    id: str
    url: str
    events: list[str] = Field(default_factory=list)  # empty: every type
    kinds: list[str] = Field(default_factory=list)  # empty: every kind
    task_id: str | None = None
    description: str = ""
    created_at: datetime
    created_by: str | None = None
    # never shown but once, at creation; never logged
    secret: str = Field("", exclude=True, repr=False)

    def wants(self, event: Event) -> bool:
        if self.task_id is not None and self.task_id != event.task_id:
            return False
        if self.events and event.type.value not in self.events:
            return False
        return not (self.kinds and event.kind not in self.kinds)


class Delivery(BaseModel):
    """One event to one endpoint, and how its tries went (the delivery log)."""

    id: str
    event_id: str
    event_seq: int
    event_type: str
    endpoint_id: str
    task_id: str
    state: DeliveryState = DeliveryState.PENDING
    attempts: int = 0
    created_at: datetime
    next_at: datetime | None = None
    last_at: datetime | None = None
    last_status: int | None = None  # the receiver's HTTP status; None: no answer
    last_error: str | None = None
    last_latency_ms: float | None = None
    last_body: str | None = None  # at most 1 KiB of the receiver's answer


class DeliveryPage(BaseModel):
    items: list[Delivery]
    next_cursor: str | None = None
