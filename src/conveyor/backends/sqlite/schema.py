"""SQLite's schema: the numbered files in ``migrations/``, applied on open.

The version a database is at is ``meta.schema_version`` (as Conveyor has
always recorded it: databases written before the schema was kept as files are
at version 1 or 2 and are upgraded from there).  The runner
(``conveyor.backends.migrations``) applies what is missing inside one
``BEGIN IMMEDIATE`` transaction, so a second process opening the same file
waits on the write lock and then finds nothing left to do.

A migration runs statement by statement (``executescript`` would commit the
transaction first).  SQLite has no ``ADD COLUMN IF NOT EXISTS``: adding a
column that is already there counts as done, because before version 3 the auth
store changed its own tables outside any version (see ``0004``).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from conveyor.backends import migrations
from conveyor.backends.migrations import Migration

MIGRATIONS = migrations.load("conveyor.backends.sqlite")
SCHEMA_VERSION = str(len(MIGRATIONS))

_ADD_COLUMN = re.compile(r"^\s*ALTER\s+TABLE\s+\S+\s+ADD\s+", re.IGNORECASE)


def statements(sql: str) -> Iterator[str]:
    """The statements of a migration, each with the comment lines before it."""
    buf = ""
    for line in sql.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            yield buf.strip()
            buf = ""
    rest = "\n".join(
        ln for ln in buf.splitlines() if ln.strip() and not ln.strip().startswith("--")
    )
    if rest:
        raise ValueError(f"incomplete statement at the end of a migration: {rest[:80]!r}")


def _code(statement: str) -> str:
    """The statement without its leading comment lines."""
    lines = statement.splitlines()
    while lines and (not lines[0].strip() or lines[0].strip().startswith("--")):
        lines.pop(0)
    return "\n".join(lines)


class SQLiteTarget(migrations.Target):
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn  # autocommit (isolation_level=None): transactions are ours

    @contextmanager
    def locked(self) -> Iterator[None]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def version(self) -> int:
        c = self.conn
        if c.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone() is None:
            return 0
        row = c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row is not None else 0

    def run(self, migration: Migration) -> None:
        for statement in statements(migration.sql):
            try:
                self.conn.execute(statement)
            except sqlite3.OperationalError as exc:
                if "duplicate column name" in str(exc) and _ADD_COLUMN.match(_code(statement)):
                    continue  # added before it had a version (see the module docs)
                raise

    def record(self, migration: Migration) -> None:
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(migration.version),),
        )


def upgrade(conn: sqlite3.Connection) -> list[Migration]:
    """Bring the database behind ``conn`` to :data:`SCHEMA_VERSION`; the migrations applied.

    A database newer than this code is left as it is (``check_ready`` says so).
    """
    target = SQLiteTarget(conn)
    if target.version() > len(MIGRATIONS):
        return []
    return migrations.apply(target, MIGRATIONS)
