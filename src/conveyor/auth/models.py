"""What the auth store keeps: token records (hashes only) and audit events."""

from __future__ import annotations

import hashlib
import secrets
import time
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from conveyor.models import utcnow

from .roles import Role

# bandit B105: a public prefix, not a secret
TOKEN_PREFIX = "cvy"  # nosec B105


class TokenRecord(BaseModel):
    """A bearer token as stored: never the token itself, only its SHA-256."""

    id: str
    name: str
    role: Role
    token_hash: str
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    created_by: str | None = None
    worker_id: str | None = None  # set on a worker's credential
    # names of worker secrets (CONVEYOR_SECRET_<NAME>) this token's tasks may ask for;
    # the admin may ask for any (conveyor.auth.service.Principal.may_use_secret)
    secrets: list[str] = Field(default_factory=list)

    def active(self, now: datetime | None = None) -> bool:
        now = now or utcnow()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def public(self) -> dict[str, Any]:
        """What list/show may print: everything but the hash."""
        data = self.model_dump(mode="json", exclude={"token_hash"})
        data["active"] = self.active()
        return data


def new_event_id() -> str:
    """Nanoseconds then randomness: ordered even for events in the same millisecond,
    which a ULID's random part would shuffle."""
    return f"{time.time_ns():020d}{secrets.token_hex(4)}"


class AuditEvent(BaseModel):
    id: str = Field(default_factory=new_event_id)
    at: datetime = Field(default_factory=utcnow)
    actor: str  # the token's name, or "anonymous" when auth is off
    role: str
    action: str  # submit, cancel, retry, clear, token.create, token.revoke, worker.enroll...
    target: str | None = None
    ip: str | None = None
    ok: bool = True
    detail: str | None = None


class AuditPage(BaseModel):
    events: list[AuditEvent]
    next_cursor: str | None = None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(token_id: str | None = None) -> tuple[str, str]:
    """``(token_id, token)``: ``cvy_<id>_<43 url-safe chars = 256 random bits>``.

    The id is public (lists, audit); the rest is the secret.  The id lets the
    store find the record by key and compare hashes in constant time.
    """
    tid = token_id or secrets.token_hex(6)
    return tid, f"{TOKEN_PREFIX}_{tid}_{secrets.token_urlsafe(32)}"


def token_id_of(token: str) -> str | None:
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX or not parts[1] or not parts[2]:
        return None
    if len(parts[1]) > 64 or not parts[1].isalnum():
        return None
    return parts[1]
