"""The auth store on SQLite and PostgreSQL: four small tables, one statement each.

SQLite keeps its own connection (WAL lets it sit beside the backend's writer);
PostgreSQL borrows the backend's pool.  The SQL is the same but for the
placeholder style and the time type, so both engines share this module.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from .models import AuditEvent, AuditPage, TokenRecord
from .roles import Role
from .store import AuthStore

SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS auth_tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    token_hash TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked_at REAL,
    created_by TEXT,
    worker_id TEXT,
    secrets TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS auth_tokens_worker ON auth_tokens (worker_id);
CREATE TABLE IF NOT EXISTS auth_revoked_sessions (id TEXT PRIMARY KEY, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS auth_secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS auth_nonces (nonce TEXT PRIMARY KEY, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS audit_log (
    id TEXT PRIMARY KEY,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT,
    ip TEXT,
    ok INTEGER NOT NULL,
    detail TEXT
);
"""

_CRED_COLS = (
    "id, name, role, token_hash, created_at, expires_at, revoked_at, created_by, worker_id, secrets"
)
_AUDIT_COLS = "id, at, actor, role, action, target, ip, ok, detail"


class _Cursor(Protocol):
    def execute(self, query: Any, params: Any = ...) -> Any: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> Any: ...

    @property
    def rowcount(self) -> int: ...


class SQLAuthStore(AuthStore):
    """Shared logic; subclasses give a cursor, the placeholder and time conversion."""

    ph = "?"

    @contextmanager
    def _tx(self) -> Iterator[_Cursor]:  # pragma: no cover - overridden
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


class SQLiteAuthStore(SQLAuthStore):
    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            str(path), timeout=30.0, isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA busy_timeout=30000")
        with self._lock:
            # a database made before token grants: add the column the schema now has
            cols = {r[1] for r in self._conn.execute("PRAGMA table_info(auth_tokens)")}
            if cols and "secrets" not in cols:
                try:
                    self._conn.execute(
                        "ALTER TABLE auth_tokens ADD COLUMN secrets TEXT NOT NULL DEFAULT '[]'"
                    )
                except sqlite3.OperationalError as exc:  # another process added it first
                    if "duplicate column" not in str(exc):
                        raise
            self._conn.executescript(SQLITE_SCHEMA)

    @contextmanager
    def _tx(self) -> Iterator[_Cursor]:
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    def _t(self, dt: datetime | None) -> Any:
        return None if dt is None else dt.timestamp()

    def _dt(self, value: Any) -> datetime | None:
        return None if value is None else datetime.fromtimestamp(float(value), UTC)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class PostgresAuthStore(SQLAuthStore):
    """Tables from migrations 0002_auth.sql and 0004_auth_grants_sessions.sql;
    connections from the backend's pool."""

    ph = "%s"

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    @contextmanager
    def _tx(self) -> Iterator[_Cursor]:
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            yield cur
