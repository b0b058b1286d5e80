"""The auth store port: tokens, server secrets, used nonces and the audit log.

Each backend engine provides one (``Backend.auth_store()``), kept in the same
database as the tasks so that a deployment has one thing to back up and the
API processes of a cluster share one view.  ``tests/contract/test_auth_store``
pins the semantics for every engine:

* ``put_token`` stores a new record; ``get_token(id)`` returns it or None.
* ``list_tokens`` returns every record, newest first.
* ``revoke_token(id)`` sets ``revoked_at`` once and returns the record (None
  when unknown); revoking twice keeps the first time.
* ``revoke_worker(worker_id)`` revokes every live credential of that worker
  and returns how many.
* ``secret(name, make)`` returns the stored secret, creating it with
  ``make()`` when absent; two processes racing get the same value.
* ``use_nonce(nonce, expires_at)`` records a nonce and returns True the first
  time, False for every later call (single use, atomically).
* ``revoke_session(id, expires_at)`` records a logged-out console session;
  ``session_revoked(id)`` is True for it from then on, in every process (records
  past their session's expiry may be dropped: such a cookie is refused anyway).
* a token record keeps its ``secrets`` (the worker secrets granted to it).
* ``add_audit`` appends an event; ``list_audit(limit, cursor)`` pages them
  newest first with an opaque cursor.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import datetime

from .models import AuditEvent, AuditPage, TokenRecord


class AuthStore(ABC):
    @abstractmethod
    def put_token(self, record: TokenRecord) -> None: ...

    @abstractmethod
    def get_token(self, token_id: str) -> TokenRecord | None: ...

    @abstractmethod
    def list_tokens(self) -> list[TokenRecord]: ...

    @abstractmethod
    def revoke_token(self, token_id: str, at: datetime) -> TokenRecord | None: ...

    @abstractmethod
    def revoke_worker(self, worker_id: str, at: datetime) -> int: ...

    @abstractmethod
    def secret(self, name: str, make: Callable[[], str]) -> str: ...

    @abstractmethod
    def use_nonce(self, nonce: str, expires_at: datetime) -> bool: ...

    @abstractmethod
    def revoke_session(self, session_id: str, expires_at: datetime) -> None: ...

    @abstractmethod
    def session_revoked(self, session_id: str) -> bool: ...

    @abstractmethod
    def add_audit(self, event: AuditEvent) -> None: ...

    @abstractmethod
    def list_audit(self, limit: int = 50, cursor: str | None = None) -> AuditPage: ...
