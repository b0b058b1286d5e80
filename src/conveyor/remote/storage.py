"""A remote worker's storage: the API host's buckets, reached through the API.

Downloads stream from ``/api/worker/v1/files`` (or follow its ``307`` to a
presigned URL when the API's store is S3); uploads ask ``/uploads`` first and
PUT straight to a presigned URL (or presigned parts of a multipart upload,
for big files) when there is one, else stream the file through the API,
which writes it atomically with its own engine.  Keys are checked here with
the contract's own rules before any request, and again by the API.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, BinaryIO, cast
from urllib.parse import quote

from conveyor.errors import ObjectNotFound
from conveyor.remote.connection import ApiConnection, connect
from conveyor.storage.base import (
    BlobStore,
    BlobWriter,
    ObjectInfo,
    validate_bucket,
    validate_stored_key,
)

PREFIX = "/api/worker/v1"
CHUNK = 1 << 20
TRANSFER_TIMEOUT_S = 600.0  # per read/write of a big transfer, not for the whole of it


def _path(bucket: str, key: str) -> str:
    return f"{quote(validate_bucket(bucket))}/{quote(validate_stored_key(key), safe='/')}"


def _file_body(path: Path) -> Any:
    def factory() -> Iterator[bytes]:
        def chunks() -> Iterator[bytes]:
            with open(path, "rb") as fh:
                while block := fh.read(CHUNK):
                    yield block

        return chunks()

    return factory


class _SpoolWriter(BlobWriter):
    """Written to a local temp file; one upload on ``commit``, so nothing shows before."""

    def __init__(self, store: RemoteBlobStore, bucket: str, key: str, ctype: str | None) -> None:
        self._store, self._bucket, self._key, self._ctype = store, bucket, key, ctype
        fd, name = tempfile.mkstemp(prefix="conveyor-upload-")
        self._path = Path(name)
        self._fh = os.fdopen(fd, "wb")
        self._written = 0

    def write(self, data: bytes) -> None:
        self._fh.write(data)
        self._written += len(data)

    @property
    def written(self) -> int:
        return self._written

    def commit(self) -> ObjectInfo:
        try:
            self._fh.close()
            return self._store.put_file(self._bucket, self._key, self._path, self._ctype)
        finally:
            self._path.unlink(missing_ok=True)

    def abort(self) -> None:
        self._fh.close()
        self._path.unlink(missing_ok=True)


class RemoteBlobStore(BlobStore):
    url_scheme = "https"
    # a remote worker stages outputs; the API, which holds the store, makes them visible
    can_promote = False

    def __init__(self, conn: ApiConnection) -> None:
        self.conn = conn

    @classmethod
    def from_url(cls, url: str) -> RemoteBlobStore:
        """``CONVEYOR_WORKER_CREDENTIAL`` and ``CONVEYOR_CA_CERT`` come from the environment."""
        return cls(connect(url))

    def put_file(
        self, bucket: str, key: str, path: Path, content_type: str | None = None
    ) -> ObjectInfo:
        where = _path(bucket, key)
        size = path.stat().st_size
        params: dict[str, Any] = {"size": size}
        if content_type:
            params["content_type"] = content_type
        target = self.conn.send(
            "POST", f"{PREFIX}/uploads/{where}", params=params, idempotent=True
        ).json()
        if target.get("multipart"):  # straight to the object store, in parts
            return self._put_parts(bucket, key, path, target["multipart"])
        if target.get("url"):  # straight to the object store
            headers = {**target.get("headers", {}), "content-length": str(size)}
            self.conn.send(
                "PUT",
                target["url"],
                content=_file_body(path),
                headers=headers,
                idempotent=True,  # a PUT of the whole object: repeating it is harmless
                timeout=TRANSFER_TIMEOUT_S,
                client=self.conn.plain,
            ).close()
            info = self.stat(bucket, key)
            if info is None:
                raise ObjectNotFound(f"upload of {bucket}/{key} did not land in the store")
            return info
        headers = {
            "content-type": content_type or "application/octet-stream",
            "content-length": str(size),
        }
        resp = self.conn.send(
            "PUT",
            f"{PREFIX}/files/{where}",
            content=_file_body(path),
            headers=headers,
            idempotent=True,
            timeout=TRANSFER_TIMEOUT_S,
        )
        return ObjectInfo.model_validate(resp.json())

    def _put_parts(self, bucket: str, key: str, path: Path, mp: dict[str, Any]) -> ObjectInfo:
        """PUT each part to its presigned URL, then have the API complete (or abort) it."""
        where, upload_id = _path(bucket, key), str(mp["upload_id"])
        etags: list[str] = []
        try:
            with open(path, "rb") as fh:
                for url in mp["urls"]:
                    part = fh.read(int(mp["part_size"]))
                    resp = self.conn.send(
                        "PUT",
                        url,
                        content=part,
                        headers={"content-length": str(len(part))},
                        idempotent=True,  # a part sent twice is the same part
                        timeout=TRANSFER_TIMEOUT_S,
                        client=self.conn.plain,
                    )
                    etags.append(resp.headers.get("etag", ""))
                    resp.close()
            body = {"upload_id": upload_id, "etags": etags}
            resp = self.conn.send(
                "POST", f"{PREFIX}/multipart/complete/{where}", json=body, idempotent=True
            )
            return ObjectInfo.model_validate(resp.json())
        except BaseException:
            with contextlib.suppress(Exception):  # nothing half-written stays behind
                self.conn.send(
                    "POST",
                    f"{PREFIX}/multipart/abort/{where}",
                    json={"upload_id": upload_id},
                    idempotent=True,
                )
            raise

    def writer(self, bucket: str, key: str, content_type: str | None = None) -> BlobWriter:
        _path(bucket, key)  # validate before anything is written
        return _SpoolWriter(self, bucket, key, content_type)

    def get_file(self, bucket: str, key: str, dest: Path) -> Path:
        where = _path(bucket, key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part")
        try:
            with open(tmp, "wb") as fh:
                self._download(where, fh)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return dest

    def _download(self, where: str, fh: BinaryIO) -> None:
        resp = self.conn.send(
            "GET",
            f"{PREFIX}/files/{where}",
            idempotent=True,
            stream=True,
            timeout=TRANSFER_TIMEOUT_S,
        )
        try:
            if resp.status_code in (301, 302, 303, 307, 308):  # a presigned URL
                location = resp.headers["location"]
                resp.close()
                resp = self.conn.send(
                    "GET",
                    location,
                    idempotent=True,
                    stream=True,
                    timeout=TRANSFER_TIMEOUT_S,
                    client=self.conn.plain,
                )
            for block in resp.iter_bytes(CHUNK):
                fh.write(block)
        finally:
            resp.close()

    def open(self, bucket: str, key: str) -> AbstractContextManager[BinaryIO]:
        where = _path(bucket, key)
        fh = tempfile.TemporaryFile()  # noqa: SIM115 - handed to the caller
        try:
            self._download(where, cast(BinaryIO, fh))
        except BaseException:
            fh.close()
            raise
        fh.seek(0)
        return cast(AbstractContextManager[BinaryIO], fh)

    def stat(self, bucket: str, key: str) -> ObjectInfo | None:
        try:
            resp = self.conn.send("GET", f"{PREFIX}/stat/{_path(bucket, key)}", idempotent=True)
        except ObjectNotFound:
            return None
        return ObjectInfo.model_validate(resp.json())

    def list(
        self, bucket: str, prefix: str = "", start_after: str | None = None
    ) -> Iterator[ObjectInfo]:
        path = f"{PREFIX}/list/{quote(validate_bucket(bucket))}"
        after = start_after
        while True:
            params: dict[str, Any] = {"prefix": prefix}
            if after is not None:
                params["start_after"] = after
            page = self.conn.send("GET", path, params=params, idempotent=True).json()
            for item in page["items"]:
                yield ObjectInfo.model_validate(item)
            after = page.get("next_start_after")
            if after is None:
                return

    def delete(self, bucket: str, key: str) -> None:
        self.conn.send("DELETE", f"{PREFIX}/files/{_path(bucket, key)}", idempotent=True)

    def url(self, bucket: str, key: str, expires_s: int = 3600) -> str | None:
        return None

    def ping(self) -> None:
        self.conn.send("GET", "/api/health", idempotent=True)
