"""Task credentials: short-lived worker credentials that speak for one attempt of one task.

An executor that runs tasks elsewhere (the Slurm executor: each attempt is a job on a
compute node) holds a task's lease but does not run it.  The job that does needs to
talk to the API (progress, logs, staged outputs, the outcome) and must not be able to
do anything else.  So for each job the executor asks the API for a credential scoped
to that task and attempt (``POST /api/worker/v1/task-credential``, with the lease it
holds), and hands only that to the job.

``cvt1.<payload>.<signature>``, both base64url without padding; the payload is JSON
``{"t": task id, "a": attempt, "w": worker id, "iat", "exp", "n": nonce}``, signed
with HMAC-SHA256 under a server secret kept in the backend (``AuthStore.secret``), so
every API process verifies what any of them issued and nothing is stored per
credential.  It is worth nothing once its attempt is over: every route it may call
checks that the task is still processing under that attempt for that worker (the
routes' scope checks, ``conveyor.service.workers``), and it dies with its executor's
own credential (revoking the worker revokes its jobs).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Any

PREFIX = "cvt1"
# never longer than this, whatever the executor asks: a job may wait in a cluster's
# queue for days, and its attempt's end makes it worthless anyway
MAX_TTL_S = 14 * 86400.0


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class TaskScope:
    """What a task credential may speak for: one attempt of one task, run for ``worker_id``."""

    task_id: str
    attempt: int
    worker_id: str
    issued_at: int
    expires_at: int
    nonce: str = ""

    @property
    def job_worker_id(self) -> str:
        """The id under which the job's own heartbeats are recorded (never the executor's)."""
        return f"{self.worker_id}/{self.task_id}.{self.attempt}"


class TaskCredentialError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def is_task_credential(token: str) -> bool:
    return token.strip().startswith(PREFIX + ".")


def sign(key: bytes, scope: TaskScope) -> str:
    payload: dict[str, Any] = {
        "t": scope.task_id,
        "a": scope.attempt,
        "w": scope.worker_id,
        "iat": scope.issued_at,
        "exp": scope.expires_at,
        "n": scope.nonce or secrets.token_hex(8),
    }
    body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
    mac = hmac.new(key, f"{PREFIX}.{body}".encode(), hashlib.sha256).digest()
    return f"{PREFIX}.{body}.{_b64(mac)}"


def verify(key: bytes, token: str, now: float) -> TaskScope:
    """The scope of a genuine, unexpired task credential; ``TaskCredentialError`` otherwise.

    The signature is checked first, in constant time, so nothing in the payload is
    trusted before it."""
    token = token.strip()
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != PREFIX or len(token) > 2048:
        raise TaskCredentialError("malformed", "task credential is malformed")
    try:
        mac = _unb64(parts[2])
    except ValueError:
        raise TaskCredentialError("malformed", "task credential is malformed") from None
    want = hmac.new(key, f"{PREFIX}.{parts[1]}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(mac, want):
        raise TaskCredentialError(
            "bad_signature", "task credential signature is invalid: forged or altered"
        )
    try:
        data = json.loads(_unb64(parts[1]))
        scope = TaskScope(
            task_id=str(data["t"]),
            attempt=int(data["a"]),
            worker_id=str(data["w"]),
            issued_at=int(data["iat"]),
            expires_at=int(data["exp"]),
            nonce=str(data.get("n") or ""),
        )
    except (ValueError, KeyError, TypeError):
        raise TaskCredentialError("malformed", "task credential is malformed") from None
    if now >= scope.expires_at:
        raise TaskCredentialError("expired", "task credential has expired")
    return scope
