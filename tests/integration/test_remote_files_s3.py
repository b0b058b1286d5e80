"""A remote worker's files when the API's store is S3: bytes go straight to presigned URLs.

The API only signs: a download answers 307 to a presigned GET, an upload
asks ``/uploads`` for a presigned PUT.  Real SeaweedFS with real auth
(tests/s3server.py), so a wrong signature would be refused.  (The whole
storage contract also passes over this path: add ``ServedRemoteStore(workdir,
s3=True)`` to ``STORAGE_ENGINES``; it is left out of the default run for
time, the streamed-through-API engine runs it in full.)
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from starlette.middleware.base import RequestResponseEndpoint

from conveyor.errors import InvalidKey, ObjectNotFound, RemoteUnavailable
from conveyor.remote.connection import ApiConnection
from conveyor.remote.storage import RemoteBlobStore
from tests.apiserver import ApiServer, start_api
from tests.s3server import fresh_store

Seen = list[tuple[str, str, int]]


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[ApiServer, Seen]]:
    seen: Seen = []

    def record(app: FastAPI) -> None:
        @app.middleware("http")
        async def _log(request: Request, call_next: RequestResponseEndpoint) -> Response:
            resp = await call_next(request)
            seen.append((request.method, request.url.path, resp.status_code))
            return resp

    server = start_api(tmp_path / "api", configure=record)
    server.service.storage = fresh_store()
    yield server, seen
    server.stop()


def test_transfers_use_presigned_urls_and_the_api_only_signs(
    api: tuple[ApiServer, Seen], tmp_path: Path
) -> None:
    server, seen = api
    store = RemoteBlobStore(ApiConnection(server.url))
    data = b"\x00frame" * 300_000  # 1.8 MB
    src = tmp_path / "out.mp4"
    src.write_bytes(data)

    info = store.put_file("output", "renditions/a b+c.mp4", src, "video/mp4")
    assert (info.key, info.size) == ("renditions/a b+c.mp4", len(data))
    dest = store.get_file("output", "renditions/a b+c.mp4", tmp_path / "back.mp4")
    assert dest.read_bytes() == data
    with store.open("output", "renditions/a b+c.mp4") as fh:
        assert fh.read() == data
    behind = server.service.storage.stat("output", "renditions/a b+c.mp4")
    assert behind is not None and behind.content_type == "video/mp4"

    w = store.writer("output", "empty.txt")
    w.commit()
    assert [o.key for o in store.list("output")] == ["empty.txt", "renditions/a b+c.mp4"]
    store.delete("output", "empty.txt")
    assert store.stat("output", "empty.txt") is None
    with pytest.raises(ObjectNotFound):
        store.get_file("output", "empty.txt", tmp_path / "x")
    with pytest.raises(InvalidKey):
        store.put_file("output", "../escape", src)

    # the bytes never went through the API: it signed an upload and redirected downloads
    assert not [s for s in seen if s[0] == "PUT"]
    uploads = [s for s in seen if s[0] == "POST" and "/uploads/" in s[1]]
    assert len(uploads) == 2 and all(s[2] == 200 for s in uploads)
    downloads = [s for s in seen if s[0] == "GET" and "/files/" in s[1]]
    assert [s[2] for s in downloads] == [307, 307, 404]


def test_big_files_go_up_in_presigned_parts(api: tuple[ApiServer, Seen], tmp_path: Path) -> None:
    server, seen = api
    store = RemoteBlobStore(ApiConnection(server.url))
    threshold = server.service.storage.multipart_threshold  # type: ignore[attr-defined]
    part = server.service.storage.part_size  # type: ignore[attr-defined]
    data = os.urandom(threshold + part // 2)  # two full parts and a half
    src = tmp_path / "ckpt.bin"
    src.write_bytes(data)
    info = store.put_file("output", "ckpt/big.bin", src)
    assert info.size == len(data)
    with store.open("output", "ckpt/big.bin") as fh:
        assert hashlib.sha256(fh.read()).digest() == hashlib.sha256(data).digest()
    assert ("POST", "/api/worker/v1/multipart/complete/output/ckpt/big.bin", 200) in seen
    assert not [s for s in seen if s[0] == "PUT"]

    # a part that cannot be sent aborts the upload: nothing appears, no parts linger
    src.write_bytes(data[: threshold + 1])
    bad = RemoteBlobStore(ApiConnection(server.url, retries=0))
    # a fault we cannot cause on a live SeaweedFS: it refuses this worker's part uploads
    bad.conn.plain = httpx.Client(transport=httpx.MockTransport(lambda _: httpx.Response(503)))
    with pytest.raises(RemoteUnavailable, match="object store answered 503"):
        bad.put_file("output", "ckpt/never.bin", src)
    assert store.stat("output", "ckpt/never.bin") is None
    assert ("POST", "/api/worker/v1/multipart/abort/output/ckpt/never.bin", 204) in seen
