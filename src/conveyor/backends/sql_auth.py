"""The auth store both SQL engines share: a few small tables, one statement each.

The SQL is the same on SQLite and PostgreSQL but for the placeholder style
and the time type; each engine's ``auth.py`` gives a transaction, its
placeholder and its time conversion (``backends/sqlite/auth.py``: a
connection of its own beside the engine's writer; ``backends/postgres/auth.py``:
the engine's pool).  The tables are created by each engine's migrations.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Protocol

from conveyor.auth.models import AuditEvent, AuditPage, TokenRecord
from conveyor.auth.roles import Role
from conveyor.auth.store import AuthStore

_CRED_COLS = (
    "id, name, role, token_hash, created_at, expires_at, revoked_at, created_by, worker_id, secrets"
)
_AUDIT_COLS = "id, at, actor, role, action, target, ip, ok, detail"


class AuthCursor(Protocol):
    def execute(self, query: Any, params: Any = ...) -> Any: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> Any: ...

    @property
    def rowcount(self) -> int: ...


class SQLAuthStore(AuthStore):
    """Shared logic; subclasses give a cursor, the placeholder and time conversion."""

    ph = "?"

    @contextmanager
    def _tx(self) -> Iterator[AuthCursor]:  # pragma: no cover - overridden
        raise NotImplementedError
        yield

    def _t(self, dt: datetime | None) -> Any:
        return dt

    def _dt(self, value: Any) -> datetime | None:
        return value  # type: ignore[no-any-return]

    def _q(self, sql: str) -> str:
        return sql.replace("?", self.ph)

    def _token(self, r: Sequence[Any]) -> TokenRecord:
        created = self._dt(r[4])
        assert created is not None
        return TokenRecord(
            id=r[0],
            name=r[1],
            role=Role(r[2]),
            token_hash=r[3],
            created_at=created,
            expires_at=self._dt(r[5]),
            revoked_at=self._dt(r[6]),
            created_by=r[7],
            worker_id=r[8],
            secrets=json.loads(r[9] or "[]"),
        )

    def put_token(self, record: TokenRecord) -> None:
        with self._tx() as cur:
            cur.execute(
                self._q(f"INSERT INTO auth_tokens ({_CRED_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?)"),
                (
                    record.id,
                    record.name,
                    record.role.value,
                    record.token_hash,
                    self._t(record.created_at),
                    self._t(record.expires_at),
                    self._t(record.revoked_at),
                    record.created_by,
                    record.worker_id,
                    json.dumps(record.secrets),
                ),
            )

    def get_token(self, token_id: str) -> TokenRecord | None:
        with self._tx() as cur:
            cur.execute(self._q(f"SELECT {_CRED_COLS} FROM auth_tokens WHERE id = ?"), (token_id,))
            row = cur.fetchone()
        return None if row is None else self._token(row)

    def list_tokens(self) -> list[TokenRecord]:
        with self._tx() as cur:
            cur.execute(f"SELECT {_CRED_COLS} FROM auth_tokens ORDER BY created_at DESC, id DESC")
            rows = cur.fetchall()
        return [self._token(r) for r in rows]

    def revoke_token(self, token_id: str, at: datetime) -> TokenRecord | None:
        with self._tx() as cur:
            cur.execute(
                self._q(
                    "UPDATE auth_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL"
                ),
                (self._t(at), token_id),
            )
        return self.get_token(token_id)

    def revoke_worker(self, worker_id: str, at: datetime) -> int:
        with self._tx() as cur:
            cur.execute(
                self._q(
                    "UPDATE auth_tokens SET revoked_at = ? WHERE worker_id = ? "
                    "AND revoked_at IS NULL"
                ),
                (self._t(at), worker_id),
            )
            return int(cur.rowcount)

    def secret(self, name: str, make: Callable[[], str]) -> str:
        with self._tx() as cur:
            cur.execute(
                self._q(
                    "INSERT INTO auth_secrets (name, value) VALUES (?, ?) "
                    "ON CONFLICT (name) DO NOTHING"
                ),
                (name, make()),
            )
            cur.execute(self._q("SELECT value FROM auth_secrets WHERE name = ?"), (name,))
            row = cur.fetchone()
        return str(row[0])

    def use_nonce(self, nonce: str, expires_at: datetime) -> bool:
        with self._tx() as cur:
            # nonces past their token's expiry can never be presented again: drop them
            cur.execute(
                self._q("DELETE FROM auth_nonces WHERE expires_at < ?"),
                (self._t(datetime.now(UTC)),),
            )
            cur.execute(
                self._q(
                    "INSERT INTO auth_nonces (nonce, expires_at) VALUES (?, ?) "
                    "ON CONFLICT (nonce) DO NOTHING"
                ),
                (nonce, self._t(expires_at)),
            )
            return int(cur.rowcount) == 1

    def revoke_session(self, session_id: str, expires_at: datetime) -> None:
        with self._tx() as cur:
            # sessions past their expiry are refused by their cookie alone: drop them
            cur.execute(
                self._q("DELETE FROM auth_revoked_sessions WHERE expires_at < ?"),
                (self._t(datetime.now(UTC)),),
            )
            cur.execute(
                self._q(
                    "INSERT INTO auth_revoked_sessions (id, expires_at) VALUES (?, ?) "
                    "ON CONFLICT (id) DO NOTHING"
                ),
                (session_id, self._t(expires_at)),
            )

    def session_revoked(self, session_id: str) -> bool:
        with self._tx() as cur:
            cur.execute(self._q("SELECT 1 FROM auth_revoked_sessions WHERE id = ?"), (session_id,))
            return cur.fetchone() is not None

    def add_audit(self, event: AuditEvent) -> None:
        with self._tx() as cur:
            cur.execute(
                self._q(f"INSERT INTO audit_log ({_AUDIT_COLS}) VALUES (?,?,?,?,?,?,?,?,?)"),
                (
                    event.id,
                    self._t(event.at),
                    event.actor,
                    event.role,
                    event.action,
                    event.target,
                    event.ip,
                    bool(event.ok) if self.ph != "?" else int(event.ok),
                    event.detail,
                ),
            )

    def list_audit(self, limit: int = 50, cursor: str | None = None) -> AuditPage:
        limit = max(1, min(1000, limit))
        with self._tx() as cur:
            if cursor:
                cur.execute(
                    self._q(
                        f"SELECT {_AUDIT_COLS} FROM audit_log WHERE id < ? ORDER BY id DESC LIMIT ?"
                    ),
                    (cursor, limit + 1),
                )
            else:
                cur.execute(
                    self._q(f"SELECT {_AUDIT_COLS} FROM audit_log ORDER BY id DESC LIMIT ?"),
                    (limit + 1,),
                )
            rows = cur.fetchall()
        events = [
            AuditEvent(
                id=r[0],
                at=self._dt(r[1]),
                actor=r[2],
                role=r[3],
                action=r[4],
                target=r[5],
                ip=r[6],
                ok=bool(r[7]),
                detail=r[8],
            )
            for r in rows[:limit]
        ]
        more = len(rows) > limit
        return AuditPage(events=events, next_cursor=events[-1].id if more and events else None)
