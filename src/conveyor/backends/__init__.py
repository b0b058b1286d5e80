"""Backends are chosen by URL so that a deployment changes engine by config alone."""

from __future__ import annotations

from conveyor.backends.base import Backend
from conveyor.errors import InvalidRequest


def open_backend(url: str) -> Backend:
    if url.startswith("sqlite:"):
        from conveyor.backends.sqlite import SQLiteBackend

        return SQLiteBackend.from_url(url)
    if url.startswith(("postgresql://", "postgres://")):
        from conveyor.backends.postgres import PostgresBackend

        return PostgresBackend.from_url(url)
    if url.startswith("aws://"):
        from conveyor.backends.aws import AWSBackend

        return AWSBackend.from_url(url)
    if url.startswith(("https://", "http://")):
        from conveyor.backends.remote import RemoteBackend

        return RemoteBackend.from_url(url)
    scheme = url.split("://", 1)[0] if "://" in url else url[:20]
    raise InvalidRequest(  # the URL itself may hold a password: show its scheme only
        f"unsupported backend URL scheme {scheme!r}: expected sqlite:///path/to/file.db "
        "postgresql://user:pass@host:5432/db "
        "aws://?queue_url=…&table=…&region=… or https://API (a remote worker)"
    )


__all__ = ["Backend", "open_backend"]
