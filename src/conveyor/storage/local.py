"""``file://`` storage: a bucket is a folder under one root.

Writes land in a hidden staging folder inside the bucket and are renamed
into place, so a watcher or a reader never sees half an object.
"""

from __future__ import annotations

import contextlib
import hashlib
import mimetypes
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlparse

from conveyor.errors import Conflict, InvalidKey, ObjectNotFound
from conveyor.storage.base import (
    STAGING_ROOT,
    BlobStore,
    BlobWriter,
    ObjectInfo,
    is_staging_key,
    validate_bucket,
    validate_stored_key,
)

STAGING = ".conveyor-tmp"


def _etag(st: os.stat_result) -> str:
    """Cheap change detector: size + mtime, no need to hash gigabytes."""
    return hashlib.md5(f"{st.st_size}:{st.st_mtime_ns}".encode(), usedforsecurity=False).hexdigest()


def _info(bucket: str, key: str, st: os.stat_result) -> ObjectInfo:
    return ObjectInfo(
        bucket=bucket,
        key=key,
        size=st.st_size,
        etag=_etag(st),
        modified=datetime.fromtimestamp(st.st_mtime, UTC),
        content_type=mimetypes.guess_type(key)[0],
    )


class _LocalWriter(BlobWriter):
    def __init__(self, store: LocalBlobStore, bucket: str, key: str) -> None:
        self._store = store
        self._bucket = bucket
        self._key = key
        self._tmp = store._staging(bucket) / uuid.uuid4().hex
        self._fh: BinaryIO | None = open(self._tmp, "wb")  # noqa: SIM115 - closed in commit/abort
        self._written = 0

    def write(self, data: bytes) -> None:
        assert self._fh is not None, "writer already closed"
        self._fh.write(data)
        self._written += len(data)

    @property
    def written(self) -> int:
        return self._written

    def commit(self) -> ObjectInfo:
        assert self._fh is not None, "writer already closed"
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._fh = None
        dest = self._store._path(self._bucket, self._key)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self._tmp, dest)
        except (IsADirectoryError, NotADirectoryError, FileExistsError):
            # a folder holds "a/b", so no object "a" (or the reverse): S3 allows
            # both, a folder cannot; say so rather than fail with a 500
            self._tmp.unlink(missing_ok=True)
            raise Conflict(
                f"cannot store {self._bucket}/{self._key}: on a local store a key cannot be "
                "both an object and a folder of other objects"
            ) from None
        return _info(self._bucket, self._key, dest.stat())

    def abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()


class LocalBlobStore(BlobStore):
    url_scheme = "file"

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_url(cls, url: str) -> LocalBlobStore:
        parsed = urlparse(url)
        path = unquote(parsed.path)
        if parsed.netloc and parsed.netloc not in ("", "localhost"):
            path = parsed.netloc + path  # file://relative/dir
        return cls(Path(path))

    # -- paths -------------------------------------------------------------
    def _bucket_dir(self, bucket: str) -> Path:
        return self.root / validate_bucket(bucket)

    def _path(self, bucket: str, key: str) -> Path:
        path = self._bucket_dir(bucket) / validate_stored_key(key)
        # validate_stored_key already forbids escapes; this guards symlinked roots too
        if not path.resolve().is_relative_to(self._bucket_dir(bucket).resolve()):
            raise InvalidKey(f"object key {key!r} resolves outside bucket {bucket!r}")
        return path

    def _staging(self, bucket: str) -> Path:
        d = self._bucket_dir(bucket) / STAGING
        d.mkdir(parents=True, exist_ok=True)
        return d

    def bucket_dir(self, bucket: str) -> Path:
        d = self._bucket_dir(bucket)
        d.mkdir(parents=True, exist_ok=True)
        return d

    # -- contract ----------------------------------------------------------
    def put_file(
        self, bucket: str, key: str, path: Path, content_type: str | None = None
    ) -> ObjectInfo:
        w = _LocalWriter(self, bucket, key)
        try:
            with open(path, "rb") as src:
                shutil.copyfileobj(src, w, length=1024 * 1024)  # type: ignore[misc]
            return w.commit()
        except BaseException:
            w.abort()
            raise

    def writer(self, bucket: str, key: str, content_type: str | None = None) -> BlobWriter:
        self._path(bucket, key)  # validate before creating anything
        return _LocalWriter(self, bucket, key)

    def get_file(self, bucket: str, key: str, dest: Path) -> Path:
        src = self._path(bucket, key)
        if not src.is_file():
            raise ObjectNotFound(f"object not found: {bucket}/{key}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        return dest

    def open(self, bucket: str, key: str) -> AbstractContextManager[BinaryIO]:
        src = self._path(bucket, key)
        if not src.is_file():
            raise ObjectNotFound(f"object not found: {bucket}/{key}")
        return open(src, "rb")

    def stat(self, bucket: str, key: str) -> ObjectInfo | None:
        p = self._path(bucket, key)
        try:
            st = p.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not p.is_file():
            return None
        return _info(bucket, key, st)

    def list(
        self, bucket: str, prefix: str = "", start_after: str | None = None
    ) -> Iterator[ObjectInfo]:
        base = self._bucket_dir(bucket)
        # staged objects are listed only under their own root, and never with the rest
        top = base / STAGING_ROOT if is_staging_key(prefix) else base
        folder = prefix.rpartition("/")[0]
        if folder and folder != STAGING_ROOT:  # walk only the folder the prefix names
            try:
                top = base / validate_stored_key(folder)
            except InvalidKey:
                return  # no key starts with a prefix no key could have
        if not top.is_dir() or top.is_symlink():
            return
        keys: list[tuple[str, os.stat_result]] = []
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = [d for d in dirnames if not d.startswith(".conveyor")]
            rel_dir = os.path.relpath(dirpath, base)
            for name in filenames:
                key = name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/")
                if not key.startswith(prefix) or (start_after is not None and key <= start_after):
                    continue
                try:
                    keys.append((key, os.stat(os.path.join(dirpath, name))))
                except FileNotFoundError:
                    continue
        keys.sort(key=lambda kv: kv[0])
        for key, st in keys:
            yield _info(bucket, key, st)

    def delete(self, bucket: str, key: str) -> None:
        # a folder of other objects is no object: nothing to delete, as on S3
        path = self._path(bucket, key)
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, NotADirectoryError):
            path.unlink()
            if is_staging_key(key):
                self._prune(path.parent, self._bucket_dir(bucket) / STAGING_ROOT)

    def url(self, bucket: str, key: str, expires_s: int = 3600) -> str | None:
        return None

    def promote(self, bucket: str, src: str, dest: str) -> ObjectInfo:
        """A rename: the object appears at ``dest`` whole, and ``src`` is gone."""
        src_path, dest_path = self._path(bucket, src), self._path(bucket, dest)
        if not src_path.is_file():
            raise ObjectNotFound(f"object not found: {bucket}/{src}")
        try:
            dest_path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src_path, dest_path)
        except (IsADirectoryError, NotADirectoryError, FileExistsError):
            raise Conflict(
                f"cannot store {bucket}/{dest}: on a local store a key cannot be "
                "both an object and a folder of other objects"
            ) from None
        except FileNotFoundError:  # another promoter renamed it first
            raise ObjectNotFound(f"object not found: {bucket}/{src}") from None
        self._prune(src_path.parent, self._bucket_dir(bucket) / STAGING_ROOT)
        return _info(bucket, dest, dest_path.stat())

    @staticmethod
    def _prune(folder: Path, root: Path) -> None:
        """Remove the empty folders a move left, up to (not including) ``root``."""
        while folder != root and folder.is_relative_to(root):
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent

    def local_path(self, bucket: str, key: str) -> Path | None:
        return self._path(bucket, key)

    def ping(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise OSError(f"storage root {self.root} is not writable")
