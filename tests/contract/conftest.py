"""Engines under contract test.

Every backend engine and every storage engine runs the same suites
(``test_backend_contract.py``, ``test_storage_contract.py``).  Adding an
engine is adding one factory to ``BACKEND_ENGINES`` / ``STORAGE_ENGINES``:

* a backend factory takes a fresh per-test directory and returns an
  *opener*: ``open(backoff_base=...) -> Backend``.  Every call of the opener
  must return a new handle on the *same* empty store (same SQLite file, same
  PostgreSQL schema, same SQS queue + DynamoDB table), as a second process
  would see it.  The suite closes every handle it opens.
* a storage factory takes a fresh per-test directory and returns an empty
  ``BlobStore`` (for S3: a fresh bucket prefix or fresh buckets on the
  endpoint).

A factory whose engine cannot be started here (no PostgreSQL binaries, no
S3 server, ...) skips with the reason on a developer machine and FAILS when
``CI=true``: CI never passes by skipping.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conveyor.backends.base import Backend
from conveyor.storage.base import BlobStore

# Back-off used by the default ``backend`` fixture: small so that retry tests
# do not sleep, large enough that "delayed right after fail()" is observable.
FAST_BACKOFF_S = 0.05

BackendOpener = Callable[..., Backend]
BackendFactory = Callable[[Path], BackendOpener]
StorageFactory = Callable[[Path], BlobStore]


# -- backend engines ---------------------------------------------------------
def _sqlite_backend(workdir: Path) -> BackendOpener:
    from conveyor.backends.sqlite import SQLiteBackend

    path = workdir / "conveyor.db"

    def open_backend(*, backoff_base: float = FAST_BACKOFF_S) -> Backend:
        return SQLiteBackend(path, backoff_base=backoff_base)

    return open_backend


def _postgres_backend(workdir: Path) -> BackendOpener:
    """An empty, migrated database on the throwaway test cluster (or CONVEYOR_TEST_PG_URL).

    The cluster (tests/pgserver.py) starts on first use, so SQLite-only runs
    never start PostgreSQL; no binaries: skip, or fail under CI=true.
    """
    from conveyor.backends.postgres import PostgresBackend
    from tests.pgserver import require_cluster

    url = require_cluster().rolling_database()

    def open_backend(*, backoff_base: float = FAST_BACKOFF_S) -> Backend:
        return PostgresBackend(url, backoff_base=backoff_base)

    return open_backend


def _aws_backend(workdir: Path) -> BackendOpener:
    """Fresh table + queues on the throwaway moto_server (tests/motoserver.py)."""
    from conveyor.backends.aws import AWSBackend
    from tests.motoserver import require_server

    url = require_server().backend_url()

    def open_backend(*, backoff_base: float = FAST_BACKOFF_S) -> Backend:
        backend = AWSBackend.from_url(url)
        backend.backoff_base = backoff_base
        return backend

    return open_backend


def _remote_backend(workdir: Path) -> BackendOpener:
    """The https:// engine (worker half over HTTP to a real API; tests/remote_contract.py)."""
    from tests.remote_contract import RemoteOpener

    return RemoteOpener(workdir)


BACKEND_ENGINES: dict[str, BackendFactory] = {
    "sqlite": _sqlite_backend,
    "remote": _remote_backend,
    "postgres": _postgres_backend,
    "aws": _aws_backend,
}


# -- storage engines ---------------------------------------------------------
def _local_store(workdir: Path) -> BlobStore:
    from conveyor.storage.local import LocalBlobStore

    return LocalBlobStore(workdir / "blobs")


def _s3_store(workdir: Path) -> BlobStore:
    # weed mini started on first use (tests/s3server.py); buckets emptied per test
    from tests.s3server import contract_store

    return contract_store(workdir)


def _remote_store(workdir: Path) -> BlobStore:
    """A remote worker's store: a local folder on the API host, streamed through the API."""
    from tests.remote_contract import ServedRemoteStore

    return ServedRemoteStore(workdir)


STORAGE_ENGINES: dict[str, StorageFactory] = {
    "local": _local_store,
    "remote": _remote_store,
    "s3": _s3_store,
}


# ``make check`` runs the contracts on the embedded engines only (no servers to start)
_ONLY = {e for e in os.environ.get("CONVEYOR_TEST_ENGINES", "").split(",") if e.strip()}


def _engines(names: dict[str, object]) -> list[str]:
    return sorted(n for n in names if not _ONLY or n in _ONLY)


# -- fixtures ----------------------------------------------------------------
@pytest.fixture(params=_engines(BACKEND_ENGINES))
def backend_engine(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def open_backend(backend_engine: str, tmp_path: Path) -> Iterator[BackendOpener]:
    """Open (more) handles on this test's store; all are closed afterwards."""
    opener = BACKEND_ENGINES[backend_engine](tmp_path)
    opened: list[Backend] = []

    def open_tracked(**kwargs: float) -> Backend:
        handle = opener(**kwargs)
        opened.append(handle)
        return handle

    yield open_tracked
    for handle in reversed(opened):
        handle.close()
    stop = getattr(opener, "stop", None)  # engines served by a test API
    if stop is not None:
        stop()


@pytest.fixture
def backend(open_backend: BackendOpener) -> Backend:
    return open_backend()


@pytest.fixture(params=_engines(STORAGE_ENGINES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    engine = STORAGE_ENGINES[request.param](tmp_path)
    yield engine
    stop = getattr(engine, "stop", None)  # engines served by a test API
    if stop is not None:
        stop()
