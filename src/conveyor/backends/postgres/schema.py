"""PostgreSQL's schema: the numbered files in ``migrations/``, recorded in ``conveyor_schema``.

``conveyor db upgrade`` applies what is missing through the shared runner
(``backends/migrations.py``), under an advisory lock so that several hosts
may run it at once.  The engine refuses to start on a schema it does not know
(newer than this code) or that is not upgraded yet (unless ``auto_upgrade``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from conveyor.backends import migrations as runner
from conveyor.backends.migrations import Migration, SchemaMismatch, SchemaStatus
from conveyor.backends.postgres.queries import QUERIES
from conveyor.backends.postgres.url import parse_url

# advisory lock key (the single-bigint key space): "CONVEY" + a number
MIGRATE_LOCK = 0x434F4E5645590001

__all__ = [
    "MIGRATE_LOCK",
    "Migration",
    "SchemaMismatch",
    "SchemaStatus",
    "check",
    "latest_version",
    "migrations",
    "schema_status",
    "schema_version",
    "upgrade",
]


def migrations() -> list[Migration]:
    """The migrations shipped with this package, oldest first."""
    return runner.load("conveyor.backends.postgres")


def latest_version() -> int:
    return len(migrations())


def schema_version(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(QUERIES["schema_exists"]).fetchone()
    if row is None or not row[0]:
        return 0
    row = conn.execute(QUERIES["schema_version"]).fetchone()
    return int(row[0]) if row else 0


class PostgresTarget(runner.Target):
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn  # autocommit: the transaction is ``locked``'s

    @contextmanager
    def locked(self) -> Iterator[None]:
        with self.conn.transaction():
            self.conn.execute(QUERIES["migrate_lock"], (MIGRATE_LOCK,))
            self.conn.execute(QUERIES["schema_table"])
            yield

    def version(self) -> int:
        return schema_version(self.conn)

    def run(self, migration: Migration) -> None:
        # several statements, no parameters: the simple query protocol
        self.conn.execute(migration.sql)

    def record(self, migration: Migration) -> None:
        self.conn.execute(QUERIES["record_migration"], (migration.version, migration.name))


def schema_status(url: str) -> SchemaStatus:
    conninfo, _ = parse_url(url)
    known = migrations()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        current = schema_version(conn)
    return SchemaStatus(current, len(known), [m for m in known if m.version > current])


def upgrade(url: str) -> list[Migration]:
    """Apply the missing migrations in one transaction; return those applied.

    Safe to run from several hosts at once: an advisory lock serialises
    them, and the later ones find nothing left to do.
    """
    conninfo, _ = parse_url(url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return runner.apply(PostgresTarget(conn), migrations())


def check(current: int, *, auto_upgrade: bool = False, url: str = "") -> None:
    """Refuse a schema newer than this code, or one not upgraded yet (unless
    ``auto_upgrade``: then upgrade it)."""
    latest = latest_version()
    if current > latest:
        raise runner.too_new(current, latest)
    if current < latest:
        if not auto_upgrade:
            raise runner.not_upgraded(current, latest)
        upgrade(url)
