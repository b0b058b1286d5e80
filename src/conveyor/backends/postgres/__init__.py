"""The PostgreSQL engine: many hosts, one database.

* ``engine.py``: the tasks (``PostgresBackend``, both halves of the contract);
* ``queries.sql`` (loaded by ``queries.py``): its fixed statements, by name;
* ``auth.py``: the auth store, on the engine's connection pool;
* ``schema.py`` and ``migrations/NNNN_name.sql``: the versioned schema
  (``conveyor db upgrade``);
* ``url.py``: the ``postgresql://`` URL and its options.
"""

from conveyor.backends.postgres.engine import PostgresBackend
from conveyor.backends.postgres.schema import (
    Migration,
    SchemaMismatch,
    SchemaStatus,
    latest_version,
    migrations,
    schema_status,
    upgrade,
)
from conveyor.backends.postgres.url import parse_url

__all__ = [
    "Migration",
    "PostgresBackend",
    "SchemaMismatch",
    "SchemaStatus",
    "latest_version",
    "migrations",
    "parse_url",
    "schema_status",
    "upgrade",
]
