"""The S3 engine beyond the storage contract, on a real ``weed mini`` (tests/s3server.py).

Multipart uploads (writer and managed transfer), presigned URLs fetched with
plain httpx, streaming reads, aborts that leave no parts behind, endpoint and
credentials from the standard AWS environment, listing across pages, and
the API's download redirect.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from pathlib import Path

import httpx
import pytest
from botocore.exceptions import ClientError
from fastapi.testclient import TestClient

from conveyor.errors import InvalidRequest, ObjectNotFound
from conveyor.storage import open_storage
from conveyor.storage.s3 import MiB, S3BlobStore
from tests.s3server import S3Server, fresh_store, s3_server, s3_store

__all__ = ["s3_server", "s3_store"]  # fixtures, imported for pytest

BUCKET = "input"


def pseudo_random_file(path: Path, size: int, seed: int = 1) -> str:
    """Write ``size`` incompressible bytes in 1 MiB blocks; return their sha256."""
    digest = hashlib.sha256()
    block = hashlib.sha256(str(seed).encode()).digest() * (MiB // 32)
    with open(path, "wb") as fh:
        written, n = 0, 0
        while written < size:
            chunk = hashlib.sha256(block[:64] + n.to_bytes(8, "big")).digest() + block[32:]
            chunk = chunk[: size - written]
            fh.write(chunk)
            digest.update(chunk)
            written += len(chunk)
            n += 1
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(MiB):
            digest.update(block)
    return digest.hexdigest()


def pending_uploads(server: S3Server, store: S3BlobStore, bucket: str = BUCKET) -> list[str]:
    try:
        resp = server.client().list_multipart_uploads(Bucket=store.physical_bucket(bucket))
    except ClientError as err:
        if err.response["Error"]["Code"] == "NoSuchBucket":
            return []
        raise
    return [u["Key"] for u in resp.get("Uploads", [])]


@pytest.fixture
def small_parts(s3_server: S3Server) -> S3BlobStore:
    """Parts of S3's minimum size, so ~20 MB objects take four of them."""
    return fresh_store(part_size=5 * MiB, multipart_threshold=5 * MiB, max_concurrency=4)


# -- multipart -----------------------------------------------------------------------
def test_writer_uploads_a_20mb_object_in_parts(
    s3_server: S3Server, small_parts: S3BlobStore, tmp_path: Path
) -> None:
    store = small_parts
    size = 20 * 1000 * 1000 + 17
    src = tmp_path / "src.bin"
    expected = pseudo_random_file(src, size)

    w = store.writer(BUCKET, "big/writer.bin", content_type="application/x-test")
    with open(src, "rb") as fh:
        while chunk := fh.read(777_777):  # odd sizes, not aligned with parts
            w.write(chunk)
    assert w.written == size
    # parts are on the server, but no object is visible yet
    assert pending_uploads(s3_server, store) == ["big/writer.bin"]
    assert store.stat(BUCKET, "big/writer.bin") is None
    assert list(store.list(BUCKET)) == []

    info = w.commit()
    assert (info.bucket, info.key, info.size) == (BUCKET, "big/writer.bin", size)
    assert info.etag.endswith("-4"), info.etag  # a completed 4-part upload
    assert '"' not in info.etag
    assert info.content_type == "application/x-test"
    assert pending_uploads(s3_server, store) == []

    dest = store.get_file(BUCKET, "big/writer.bin", tmp_path / "out" / "writer.bin")
    assert sha256_file(dest) == expected


def test_put_file_uses_a_multipart_upload_above_the_threshold(
    s3_server: S3Server, small_parts: S3BlobStore, tmp_path: Path
) -> None:
    store = small_parts
    src = tmp_path / "clip.mp4"
    expected = pseudo_random_file(src, 20 * 1000 * 1000, seed=2)

    info = store.put_file(BUCKET, "videos/clip.mp4", src)
    assert info.size == src.stat().st_size
    assert info.etag.endswith("-4"), info.etag
    assert info.content_type == "video/mp4"  # guessed from the key
    assert pending_uploads(s3_server, store) == []

    dest = store.get_file(BUCKET, "videos/clip.mp4", tmp_path / "dl.mp4")
    assert sha256_file(dest) == expected
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("dl.mp4.")]  # no temp left


def test_small_objects_are_a_single_put(s3_store: S3BlobStore, tmp_path: Path) -> None:
    w = s3_store.writer(BUCKET, "small.txt")
    w.write(b"hello ")
    w.write(b"world")
    info = w.commit()
    assert info.size == 11
    assert "-" not in info.etag  # not a multipart ETag
    assert info.etag == hashlib.md5(b"hello world", usedforsecurity=False).hexdigest()
    assert info.content_type == "text/plain"


def test_aborted_writer_leaves_no_object_and_no_upload(
    s3_server: S3Server, small_parts: S3BlobStore
) -> None:
    store = small_parts
    w = store.writer(BUCKET, "big/aborted.bin")
    for _ in range(12):
        w.write(os.urandom(MiB))  # two parts uploaded, one buffered
    assert pending_uploads(s3_server, store) == ["big/aborted.bin"]
    w.abort()
    w.abort()  # idempotent
    assert store.stat(BUCKET, "big/aborted.bin") is None
    assert list(store.list(BUCKET)) == []
    assert pending_uploads(s3_server, store) == []
    with pytest.raises(ValueError, match="aborted"):
        w.write(b"more")


def test_a_failed_commit_aborts_the_upload(
    s3_server: S3Server, small_parts: S3BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = small_parts
    w = store.writer(BUCKET, "big/failing.bin")
    w.write(os.urandom(6 * MiB))
    assert pending_uploads(s3_server, store) == ["big/failing.bin"]

    def broken(**kwargs: object) -> None:
        raise ConnectionError("network went away")

    monkeypatch.setattr(store.client, "complete_multipart_upload", broken)
    with pytest.raises(ConnectionError):
        w.commit()
    w.abort()  # what the API does after a failure: harmless
    assert pending_uploads(s3_server, store) == []
    assert store.stat(BUCKET, "big/failing.bin") is None


# -- reads -----------------------------------------------------------------------------
def test_open_streams_the_body(small_parts: S3BlobStore, tmp_path: Path) -> None:
    store = small_parts
    src = tmp_path / "stream.bin"
    expected = pseudo_random_file(src, 12 * MiB + 3, seed=3)
    store.put_file(BUCKET, "stream.bin", src)

    digest, sizes = hashlib.sha256(), []
    with store.open(BUCKET, "stream.bin") as fh:
        assert fh.readable()
        while block := fh.read(1_000_000):
            digest.update(block)
            sizes.append(len(block))
    assert digest.hexdigest() == expected
    assert sum(sizes) == 12 * MiB + 3
    assert max(sizes) == 1_000_000

    with store.open(BUCKET, "stream.bin") as fh:  # closing early is fine
        assert fh.read(5) == src.read_bytes()[:5]
    assert fh.closed

    store.put_file(BUCKET, "lines.txt", _write(tmp_path / "l.txt", b"one\ntwo\nthree"))
    with store.open(BUCKET, "lines.txt") as fh:
        assert list(fh) == [b"one\n", b"two\n", b"three"]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_missing_objects_say_which(s3_store: S3BlobStore, tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFound, match=r"^object not found: input/no/such\.bin$"):
        s3_store.open(BUCKET, "no/such.bin")
    with pytest.raises(ObjectNotFound, match=r"^object not found: input/no/such\.bin$"):
        s3_store.get_file(BUCKET, "no/such.bin", tmp_path / "x")


# -- presigned URLs ----------------------------------------------------------------------
def test_presigned_url_downloads_with_plain_httpx(
    s3_server: S3Server, s3_store: S3BlobStore, tmp_path: Path
) -> None:
    data = os.urandom(300_000)
    key = "shared/视频 #1 & more.bin"
    s3_store.put_file(BUCKET, key, _write(tmp_path / "a.bin", data))
    url = s3_store.url(BUCKET, key, expires_s=600)
    assert url is not None
    assert url.startswith(f"{s3_server.endpoint_url}/{s3_store.physical_bucket(BUCKET)}/")
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=600" in url

    r = httpx.get(url, timeout=30)
    assert r.status_code == 200, r.text
    assert r.content == data

    # the signature is checked: a tampered or expired URL is refused
    tampered = url.replace("X-Amz-Expires=600", "X-Amz-Expires=601")
    assert httpx.get(tampered, timeout=30).status_code == 403
    with pytest.raises(InvalidRequest, match="7 days"):
        s3_store.url(BUCKET, key, expires_s=8 * 24 * 3600)
    short = s3_store.url(BUCKET, key, expires_s=1)
    assert short is not None
    time.sleep(2.1)
    assert httpx.get(short, timeout=30).status_code == 403


def test_api_download_redirects_to_a_presigned_url(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conveyor.config import load_settings
    from conveyor.server.app import create_app
    from conveyor.server.runtime import Runtime

    fresh_store()  # empty buckets
    monkeypatch.setenv("CONVEYOR_CONFIG", str(tmp_path / "none.yaml"))
    settings = load_settings(data_dir=tmp_path, storage_url=s3_server.storage_url())
    runtime = Runtime.build(settings, with_worker=False, with_trigger=False)
    data = os.urandom(3 * MiB + 5)
    with TestClient(create_app(runtime)) as api:
        assert api.get("/api/health").json()["status"] == "healthy"
        r = api.put("/api/files/input/up/via-api.bin", content=data)
        assert r.status_code == 201, r.text
        assert r.json()["size"] == len(data)

        r = api.get("/api/files/input/up/via-api.bin", follow_redirects=False)
        assert r.status_code == 307
        location = r.headers["location"]
        assert location.startswith(s3_server.endpoint_url)
        assert httpx.get(location, timeout=30).content == data

        assert api.get("/api/files/input/up/missing.bin").status_code == 404


# -- configuration -------------------------------------------------------------------------
def test_endpoint_from_aws_endpoint_url_s3(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fresh_store()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint_url)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    store = open_storage(f"s3://?region=us-east-1&bucket_prefix={s3_server.bucket_prefix}")
    assert isinstance(store, S3BlobStore)
    assert store.client.meta.endpoint_url == s3_server.endpoint_url
    store.ping()
    info = store.put_file(BUCKET, "env/endpoint.txt", _write(tmp_path / "e.txt", b"via env"))
    assert info.size == 7
    with store.open(BUCKET, "env/endpoint.txt") as fh:
        assert fh.read() == b"via env"
    url = store.url(BUCKET, "env/endpoint.txt")
    assert url is not None and url.startswith(f"{s3_server.endpoint_url}/")  # path style
    assert httpx.get(url, timeout=30).content == b"via env"


def test_credentials_come_from_the_environment(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "NOT-A-KEY")
    store = open_storage(s3_server.storage_url())
    with pytest.raises(ClientError) as exc:
        store.ping()
    assert exc.value.response["Error"]["Code"] == "InvalidAccessKeyId"


def test_bucket_is_created_on_first_write(
    s3_server: S3Server, s3_store: S3BlobStore, tmp_path: Path
) -> None:
    bucket = f"new-{uuid.uuid4().hex[:8]}"
    physical = s3_store.physical_bucket(bucket)
    assert physical == s3_server.bucket_prefix + bucket
    assert list(s3_store.list(bucket)) == []
    assert s3_store.stat(bucket, "a.txt") is None
    s3_store.put_file(bucket, "a.txt", _write(tmp_path / "a.txt", b"a"))
    s3_server.client().head_bucket(Bucket=physical)
    # a second store (another process) finds it there: BucketAlreadyOwnedByYou is fine
    other = s3_server.store()
    other._create_bucket(physical)
    w = other.writer(bucket, "b.txt")
    w.write(b"b")
    w.commit()
    assert [o.key for o in other.list(bucket)] == ["a.txt", "b.txt"]


def test_long_prefixed_bucket_names_stay_valid_and_distinct(s3_store: S3BlobStore) -> None:
    names = ["a" * 63, "a" * 62, "a" * 61 + "b", "a" * 60 + ".b"]
    physical = [s3_store.physical_bucket(n) for n in names]
    assert len(set(physical)) == len(names)
    assert all(3 <= len(p) <= 63 and p[-1].isalnum() for p in physical)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("s3://my-bucket", "query parameters only"),
        ("s3:///some/path", "query parameters only"),
        ("s3://?aws_secret_access_key=x", "unknown s3 storage URL parameter"),
        ("s3://?bucket_prefix=UPPER", "invalid bucket_prefix"),
        ("s3://?listing=random", "invalid listing"),
        ("s3://?addressing_style=weird", "invalid addressing_style"),
        ("s3://?part_size_mb=1", "part size"),
        ("s3://?max_concurrency=many", "must be a number"),
    ],
)
def test_bad_urls_are_rejected(url: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        open_storage(url)


# -- listing ----------------------------------------------------------------------------
TRICKY_KEYS = [
    "a",
    "a-x.txt",
    "a.txt",
    "a/1.txt",
    "a/b/c.txt",
    "a/b-c/d.txt",
    "a/b.c",
    "a0/x",
    "a1.txt",
    "b",
    "b!/x",
    "b#c",
    "b/c",
    "z 1/y",
    "z/y",
    "é/x",
    "视频/a.mp4",
]


def test_walk_lists_in_key_order_across_pages(s3_server: S3Server, tmp_path: Path) -> None:
    """Folders sort as ``name/``: after ``a-x.txt`` and ``a.txt``, whatever the server does."""
    filler = fresh_store()
    for key in TRICKY_KEYS:
        try:
            filler.put_file(BUCKET, key, _write(tmp_path / "k", key.encode()))
        except Exception:
            # "a" (an object) and "a/..." (a folder) cannot coexist on a
            # filer-backed server: the object lives only where the server allows
            if key not in ("a", "b"):
                raise
    present = [o.key for o in filler.list(BUCKET)]
    assert present == sorted(present)
    assert set(present) >= set(TRICKY_KEYS) - {"a", "b"}

    for page_size in (1, 2, 3, None):
        store = s3_server.store(list_page_size=page_size)
        for start_after in (None, "", "a", "a/b", "a/b/c.txt", "a0", "b#", "z"):
            for prefix in ("", "a", "a/", "a/b", "b", "z", "视频/", "nothing"):
                got = [o.key for o in store.list(BUCKET, prefix, start_after)]
                want = [k for k in present if k.startswith(prefix) and k > (start_after or "")]
                assert got == want, (page_size, start_after, prefix)


def test_flat_listing(s3_server: S3Server, tmp_path: Path) -> None:
    store = fresh_store(listing="flat", list_page_size=2)
    keys = ["x/1", "x/2", "x/3/4", "y", "z/z"]
    for key in keys:
        store.put_file(BUCKET, key, _write(tmp_path / "k", b"k"))
    assert [o.key for o in store.list(BUCKET)] == keys
    assert [o.key for o in store.list(BUCKET, "x/", "x/1")] == ["x/2", "x/3/4"]
    assert [o.key for o in store.list("never-used")] == []


def test_objects_with_keys_the_store_would_refuse_are_not_listed(
    s3_server: S3Server, s3_store: S3BlobStore, tmp_path: Path
) -> None:
    s3_store.put_file(BUCKET, "ok.txt", _write(tmp_path / "k", b"k"))
    # written by another tool: a console "folder" and a reserved name
    physical = s3_store.physical_bucket(BUCKET)
    s3_server.client().put_object(Bucket=physical, Key="folder/", Body=b"")
    s3_server.client().put_object(Bucket=physical, Key=".conveyor-tmp/x", Body=b"")
    assert [o.key for o in s3_store.list(BUCKET)] == ["ok.txt"]


def test_ping(s3_store: S3BlobStore) -> None:
    s3_store.ping()


def test_a_promote_repeated_after_a_lost_delete_writes_the_final_key_once(
    s3_store: S3BlobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14's fault run (S3 down for 10 s): a completed container task's result.txt
    had two versions, the second 18.7 s after completion.  The worker's promote copied
    the staged object to its final key, then the store went away before the staged
    object's delete; the promote was retried as a whole and copied it again.  On the
    old code the versioned bucket below held 2 versions of the final key."""
    from botocore.exceptions import EndpointConnectionError

    from conveyor import outputs
    from conveyor.models import OutputFile, Task, TaskStatus

    bucket = f"versioned-{uuid.uuid4().hex[:8]}"
    physical = s3_store.physical_bucket(bucket)
    client = s3_store.client
    client.create_bucket(Bucket=physical)
    client.put_bucket_versioning(Bucket=physical, VersioningConfiguration={"Status": "Enabled"})
    staged = f"{outputs.attempt_staging('t1', 1)}out/result.txt"
    src = tmp_path / "result.txt"
    src.write_bytes(b"attempt=1\n")
    info = s3_store.put_file(bucket, staged, src, "text/plain")
    task = Task(
        id="t1",
        kind="container",
        status=TaskStatus.COMPLETED,
        outputs=[
            OutputFile(
                name="result.txt",
                bucket=bucket,
                key="out/result.txt",
                size=info.size,
                content_type="text/plain",
                staged_key=staged,
            )
        ],
    )
    real_delete = s3_store.delete
    lost = []

    def delete_lost_once(b: str, key: str) -> None:
        if key == staged and not lost:  # the copy is made; the store goes away
            lost.append(key)
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
        real_delete(b, key)

    monkeypatch.setattr(s3_store, "delete", delete_lost_once)
    monkeypatch.setattr(outputs, "STORAGE_RETRY_S", 5.0)
    try:
        assert outputs.promote_outputs(s3_store, task) == []
        assert lost == [staged]
        versions = client.list_object_versions(Bucket=physical, Prefix="out/result.txt")
        assert len(versions.get("Versions", [])) == 1, versions.get("Versions")
        assert s3_store.stat(bucket, staged) is None
        with s3_store.open(bucket, "out/result.txt") as fh:
            assert fh.read() == b"attempt=1\n"
        assert s3_store.stat(bucket, "out/result.txt").content_type == "text/plain"  # type: ignore[union-attr]
    finally:
        listing = client.list_object_versions(Bucket=physical)
        for v in listing.get("Versions", []) + listing.get("DeleteMarkers", []):
            client.delete_object(Bucket=physical, Key=v["Key"], VersionId=v["VersionId"])
        client.delete_bucket(Bucket=physical)
