"""Backends are chosen by URL so that a deployment changes engine by config alone.

``open_backend`` opens an engine (both halves of the contract: ``sqlite:``,
``postgresql://``, ``aws://``); ``open_queue`` opens what a worker needs, which
is any engine or, for a remote worker, ``https://API`` (the worker's half only).
"""

from __future__ import annotations

from conveyor.backends.base import Backend, TaskStore, WorkerQueue
from conveyor.errors import InvalidRequest

_EXPECTED = (
    "sqlite:///path/to/file.db postgresql://user:pass@host:5432/db "
    "aws://?queue_url=…&table=…&region=…"
)


def _scheme(url: str) -> str:
    # the URL itself may hold a password: show its scheme only
    return url.split("://", 1)[0] if "://" in url else url[:20]


def _is_remote(url: str) -> bool:
    return url.startswith(("https://", "http://"))


def open_backend(url: str) -> Backend:
    """An engine for ``url``: its worker queue and its task store."""
    if url.startswith("sqlite:"):
        from conveyor.backends.sqlite import SQLiteBackend

        return SQLiteBackend.from_url(url)
    if url.startswith(("postgresql://", "postgres://")):
        from conveyor.backends.postgres import PostgresBackend

        return PostgresBackend.from_url(url)
    if url.startswith("aws://"):
        from conveyor.backends.aws import AWSBackend

        return AWSBackend.from_url(url)
    if _is_remote(url):
        raise InvalidRequest(
            f"a {_scheme(url)}:// backend is an API a remote worker joins "
            "(`conveyor worker --join URL`); it holds no tasks of its own: give the API "
            f"a database instead, one of {_EXPECTED}"
        )
    raise InvalidRequest(
        f"unsupported backend URL scheme {_scheme(url)!r}: expected {_EXPECTED} "
        "or https://API (a remote worker)"
    )


def open_queue(url: str) -> WorkerQueue:
    """What a worker claims from: an engine, or ``https://API`` for a remote worker."""
    if _is_remote(url):
        from conveyor.remote.queue import RemoteQueue

        return RemoteQueue.from_url(url)
    return open_backend(url)


__all__ = ["Backend", "TaskStore", "WorkerQueue", "open_backend", "open_queue"]
