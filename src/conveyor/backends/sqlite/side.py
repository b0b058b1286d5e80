"""A connection of its own beside the engine's writer (WAL), for the stores that share
the engine's file: the auth store and the event store.  Written once here so both keep
the same transaction, lock and time rules."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from conveyor.backends.sql_auth import AuthCursor


class SQLiteSideConnection:
    """``_tx`` (BEGIN IMMEDIATE … COMMIT, one thread at a time), times as epoch seconds
    (``_t``/``_dt``) and ``close``: what the shared SQL stores ask of an engine."""

    def __init__(self, path: Path | str) -> None:
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            str(path), timeout=30.0, isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA busy_timeout=30000")

    @contextmanager
    def _tx(self) -> Iterator[AuthCursor]:
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
