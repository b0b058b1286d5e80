"""The embedded engine: SQLite in WAL mode holds tasks, queue, workers, logs and auth.

* ``engine.py``: the tasks (``SQLiteBackend``, both halves of the contract);
* ``auth.py``: the auth store, on its own connection to the same file;
* ``schema.py`` and ``migrations/NNNN_name.sql``: the schema, brought up to date
  whenever a database is opened.
"""

from conveyor.backends.sqlite.engine import SQLiteBackend
from conveyor.backends.sqlite.schema import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION", "SQLiteBackend"]
