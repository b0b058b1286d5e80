"""The event store on SQLite (``backends/sql_events.py``), on a connection of its own
beside the engine's writer (WAL).

One writer at a time holds the file, so an event's AUTOINCREMENT ``seq`` is already
the order events became visible: nothing to sequence.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from conveyor.backends.sql_auth import AuthCursor
from conveyor.backends.sql_events import SQLEventStore


class SQLiteEventStore(SQLEventStore):
    greatest = "max"

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

    @contextmanager
    def _read(self) -> Iterator[AuthCursor]:
        """A plain read (each statement sees one snapshot): no wait on the write lock."""
        with self._lock:
            yield self._conn.cursor()

    def _t(self, dt: datetime | None) -> Any:
        return None if dt is None else dt.timestamp()

    def _dt(self, value: Any) -> datetime | None:
        return None if value is None else datetime.fromtimestamp(float(value), UTC)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
