"""Storage engines are chosen by URL, like backends."""

from __future__ import annotations

from conveyor.errors import InvalidRequest
from conveyor.storage.base import BlobStore, ObjectInfo, validate_bucket, validate_key


def open_storage(url: str) -> BlobStore:
    if url.startswith("file:"):
        from conveyor.storage.local import LocalBlobStore

        return LocalBlobStore.from_url(url)
    if url.startswith("s3:"):
        from conveyor.storage.s3 import S3BlobStore

        return S3BlobStore.from_url(url)
    if url.startswith(("https://", "http://")):
        from conveyor.remote.storage import RemoteBlobStore

        return RemoteBlobStore.from_url(url)
    raise InvalidRequest(
        f"unsupported storage URL {url!r}: expected file:///path/to/dir, s3://[?endpoint_url=...] "
        "or https://API (a remote worker's files, through the API)"
    )


__all__ = ["BlobStore", "ObjectInfo", "open_storage", "validate_bucket", "validate_key"]
