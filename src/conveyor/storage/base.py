"""The storage contract: buckets of objects, the same on a local folder and S3.

Keys are validated here, once, so that no engine can be talked into writing
outside its root.  Writes are atomic: a reader sees the whole object or none.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from pydantic import BaseModel

from conveyor.errors import InvalidKey

MAX_KEY_BYTES = 1024
MAX_SEGMENT_BYTES = 255
# Where attempts stage their outputs before a fenced completion makes them
# visible (conveyor.outputs).  Users can never name it: validate_key refuses
# every '.conveyor*' segment; engines accept it through validate_stored_key.
STAGING_ROOT = ".conveyor-staging"
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class ObjectInfo(BaseModel):
    bucket: str
    key: str
    size: int
    etag: str = ""
    modified: datetime | None = None
    content_type: str | None = None


def validate_bucket(bucket: str) -> str:
    if not isinstance(bucket, str) or not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise InvalidKey(
            f"invalid bucket name {bucket!r}: use 3-63 lowercase letters, digits, '.' or '-', "
            "starting and ending with a letter or digit"
        )
    return bucket


def validate_key(key: str) -> str:
    """Return ``key`` unchanged or raise ``InvalidKey`` saying what is wrong."""
    if not isinstance(key, str) or key == "":
        raise InvalidKey("object key is empty")
    if "\x00" in key:
        raise InvalidKey("object key contains a NUL character")
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in key):
        raise InvalidKey("object key contains a control character")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise InvalidKey(f"object key is longer than {MAX_KEY_BYTES} bytes")
    if key.startswith("/") or key.startswith("\\") or re.match(r"^[A-Za-z]:", key):
        raise InvalidKey(f"object key {key!r} is an absolute path; use a relative key")
    if "\\" in key:
        raise InvalidKey(f"object key {key!r} contains a backslash; use '/' between folders")
    for segment in key.split("/"):
        if segment in ("..", "."):
            raise InvalidKey(f"object key {key!r} contains a '{segment}' path segment")
        if segment == "":
            raise InvalidKey(f"object key {key!r} contains an empty path segment")
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise InvalidKey(f"object key has a path segment longer than {MAX_SEGMENT_BYTES} bytes")
        if segment.startswith(".conveyor"):
            raise InvalidKey(f"object key {key!r} uses the reserved prefix '.conveyor'")
    return key


def is_staging_key(key: str) -> bool:
    return key.startswith(STAGING_ROOT + "/")


def validate_stored_key(key: str) -> str:
    """A key an engine may hold: a user key (``validate_key``) or a staging key, which is
    ``STAGING_ROOT/`` followed by a valid key; the whole within ``MAX_KEY_BYTES``."""
    if is_staging_key(key):
        validate_key(key[len(STAGING_ROOT) + 1 :])
        if len(key.encode("utf-8")) > MAX_KEY_BYTES:
            raise InvalidKey(f"staged object key is longer than {MAX_KEY_BYTES} bytes")
        return key
    return validate_key(key)


def listable(key: str, prefix: str) -> bool:
    """Whether ``list(prefix)`` may yield ``key``: staging keys only to a staging prefix."""
    try:
        if is_staging_key(prefix):
            validate_stored_key(key)
        else:
            validate_key(key)
    except InvalidKey:
        return False
    return True


class BlobWriter(ABC):
    """A streaming write that becomes visible only on ``commit``."""

    @abstractmethod
    def write(self, data: bytes) -> None: ...

    @abstractmethod
    def commit(self) -> ObjectInfo: ...

    @abstractmethod
    def abort(self) -> None: ...

    @property
    @abstractmethod
    def written(self) -> int: ...


class BlobStore(ABC):
    """One storage engine; buckets are created on first use."""

    url_scheme: str = ""
    can_promote: bool = True  # False: ``promote`` is left to the API that holds the store

    @abstractmethod
    def put_file(
        self, bucket: str, key: str, path: Path, content_type: str | None = None
    ) -> ObjectInfo: ...

    @abstractmethod
    def writer(self, bucket: str, key: str, content_type: str | None = None) -> BlobWriter: ...

    @abstractmethod
    def get_file(self, bucket: str, key: str, dest: Path) -> Path:
        """Download to ``dest``; raise ``ObjectNotFound`` if missing."""

    @abstractmethod
    def open(self, bucket: str, key: str) -> AbstractContextManager[BinaryIO]: ...

    @abstractmethod
    def stat(self, bucket: str, key: str) -> ObjectInfo | None: ...

    def exists(self, bucket: str, key: str) -> bool:
        return self.stat(bucket, key) is not None

    @abstractmethod
    def list(
        self, bucket: str, prefix: str = "", start_after: str | None = None
    ) -> Iterator[ObjectInfo]:
        """Objects under ``prefix`` in key order, after ``start_after``."""

    @abstractmethod
    def delete(self, bucket: str, key: str) -> None: ...

    @abstractmethod
    def url(self, bucket: str, key: str, expires_s: int = 3600) -> str | None:
        """A URL a client can download from directly, or None (serve via the API)."""

    def promote(self, bucket: str, src: str, dest: str) -> ObjectInfo:
        """Move ``src`` to ``dest`` in one bucket, replacing ``dest``: how a staged output
        becomes visible.  ``ObjectNotFound`` if ``src`` is gone.  Engines do it without
        moving the bytes through this process (a rename; a server-side copy)."""
        import tempfile

        with tempfile.TemporaryDirectory(prefix="conveyor-promote-") as tmp:
            local = self.get_file(bucket, src, Path(tmp) / "object")
            info = self.put_file(bucket, dest, local)
        self.delete(bucket, src)
        return info

    def local_path(self, bucket: str, key: str) -> Path | None:
        """The object's path on this host when the engine is a local folder."""
        return None

    def ping(self) -> None:  # noqa: B027 - optional hook
        """Raise if the store cannot be reached."""
