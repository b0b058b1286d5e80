"""The auth store on PostgreSQL: the shared SQL auth store (``backends/sql_auth.py``) on
the engine's connection pool.  Its tables come from migrations ``0002_auth.sql`` and
``0004_auth_grants_sessions.sql``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from conveyor.backends.sql_auth import AuthCursor, SQLAuthStore


class PostgresAuthStore(SQLAuthStore):
    ph = "%s"

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    @contextmanager
    def _tx(self) -> Iterator[AuthCursor]:
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            yield cur
