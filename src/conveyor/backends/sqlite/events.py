"""The event store on SQLite (``backends/sql_events.py``), on a connection of its own
beside the engine's writer (WAL).

One writer at a time holds the file, so an event's AUTOINCREMENT ``seq`` is already
the order events became visible: nothing to sequence.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from conveyor.backends.sql_auth import AuthCursor
from conveyor.backends.sql_events import SQLEventStore
from conveyor.backends.sqlite.side import SQLiteSideConnection


class SQLiteEventStore(SQLiteSideConnection, SQLEventStore):
    greatest = "max"

    @contextmanager
    def _read(self) -> Iterator[AuthCursor]:
        """A plain read (each statement sees one snapshot): no wait on the write lock."""
        with self._lock:
            yield self._conn.cursor()
