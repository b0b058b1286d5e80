"""The auth store on SQLite: the shared SQL auth store (``backends/sql_auth.py``) on a
connection of its own (WAL lets it sit beside the engine's writer).

Its tables come from the engine's migrations (``0003_auth.sql``, ``0004_…``),
applied when the engine opened the file.
"""

from __future__ import annotations

from conveyor.backends.sql_auth import SQLAuthStore
from conveyor.backends.sqlite.side import SQLiteSideConnection


class SQLiteAuthStore(SQLiteSideConnection, SQLAuthStore):
    """The shared SQL auth store on its own connection (``side.py``)."""
