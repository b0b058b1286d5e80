"""One schema migration runner for both SQL engines.

Each SQL engine keeps its schema as numbered files in its own folder,
``backends/<engine>/migrations/NNNN_name.sql``: version 1, 2, 3 ... without
gaps, never edited once released (a change is the next file).  An engine
records the version its database is at in its own terms (PostgreSQL: the
``conveyor_schema`` table; SQLite: ``meta.schema_version``) and gives the
runner a :class:`Target`; :func:`apply` brings the database to the newest
version in one transaction, holding a lock so that several processes or hosts
may run it at once (the later ones find nothing left to do).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass
from importlib import resources

from conveyor.errors import ConveyorError

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class SchemaMismatch(ConveyorError):
    """The database schema is not the one this Conveyor was built for."""

    code = "schema_mismatch"
    http_status = 503


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


@dataclass(frozen=True)
class SchemaStatus:
    current: int  # 0: no Conveyor schema at all
    latest: int  # the newest version this code knows
    pending: list[Migration]

    @property
    def up_to_date(self) -> bool:
        return self.current == self.latest


def load(package: str, folder: str = "migrations") -> list[Migration]:
    """The migrations shipped in ``package``/``folder``, oldest first."""
    found: dict[int, Migration] = {}
    for entry in resources.files(package).joinpath(folder).iterdir():
        m = _MIGRATION_NAME.match(entry.name)
        if m is None:
            continue
        version = int(m.group(1))
        if version in found:
            raise RuntimeError(f"two migrations with version {version}: {entry.name}")
        found[version] = Migration(version, m.group(2), entry.read_text(encoding="utf-8"))
    ordered = [found[v] for v in sorted(found)]
    if [m.version for m in ordered] != list(range(1, len(ordered) + 1)):
        raise RuntimeError(f"{package}: migration versions must be 1, 2, 3, ... without gaps")
    return ordered


def too_new(current: int, latest: int) -> SchemaMismatch:
    return SchemaMismatch(
        f"database schema is at version {current} but this Conveyor knows up to "
        f"version {latest}: upgrade Conveyor"
    )


def not_upgraded(current: int, latest: int) -> SchemaMismatch:
    if current == 0:
        return SchemaMismatch(
            f"the database has no Conveyor schema yet (this Conveyor needs version {latest}): "
            "run `conveyor db upgrade --backend URL` first"
        )
    return SchemaMismatch(
        f"database schema is at version {current} but this Conveyor needs version {latest}: "
        "run `conveyor db upgrade --backend URL`"
    )


class Target(ABC):
    """One database as the runner sees it."""

    @abstractmethod
    def locked(self) -> AbstractContextManager[None]:
        """A transaction holding the engine's migration lock: one runner at a time."""

    @abstractmethod
    def version(self) -> int:
        """The version the database is at (0: no schema), read inside ``locked``."""

    @abstractmethod
    def run(self, migration: Migration) -> None:
        """Apply one migration's statements."""

    @abstractmethod
    def record(self, migration: Migration) -> None:
        """Record that the database is now at ``migration.version``."""


def apply(target: Target, known: list[Migration]) -> list[Migration]:
    """Apply the migrations the database lacks, in one transaction; return those applied.

    Raises ``SchemaMismatch`` when the database is at a version newer than ``known``.
    """
    with target.locked():
        current = target.version()
        if current > len(known):
            raise too_new(current, len(known))
        todo = [m for m in known if m.version > current]
        for m in todo:
            target.run(m)
            target.record(m)
    return todo
