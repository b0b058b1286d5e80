"""The storage contract (``conveyor.storage.base``).

Runs against every engine in ``conftest.STORAGE_ENGINES``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from conveyor.errors import InvalidKey, LeaseLost, ObjectNotFound
from conveyor.remote.storage import RemoteBlobStore
from conveyor.storage.base import MAX_KEY_BYTES, MAX_SEGMENT_BYTES, BlobStore, ObjectInfo

BUCKET = "input"


def put_bytes(
    store: BlobStore, tmp_path: Path, key: str, data: bytes, bucket: str = BUCKET
) -> ObjectInfo:
    src = tmp_path / f"src-{hashlib.sha1(key.encode()).hexdigest()}"
    src.write_bytes(data)
    return store.put_file(bucket, key, src)


def read(store: BlobStore, key: str, bucket: str = BUCKET) -> bytes:
    with store.open(bucket, key) as fh:
        return fh.read()


def keys(store: BlobStore, bucket: str = BUCKET, **kw: str | None) -> list[str]:
    return [o.key for o in store.list(bucket, **kw)]  # type: ignore[arg-type]


# -- put / get / open / stat / exists / delete --------------------------------------
def test_put_file_then_read_it_back_every_way(store: BlobStore, tmp_path: Path) -> None:
    data = b"\x00\x01binary\xffdata" * 1000
    info = put_bytes(store, tmp_path, "clips/2024/a.mp4", data)
    assert info.bucket == BUCKET
    assert info.key == "clips/2024/a.mp4"
    assert info.size == len(data)

    assert read(store, "clips/2024/a.mp4") == data

    dest = tmp_path / "download" / "a.mp4"
    dest.parent.mkdir()
    assert store.get_file(BUCKET, "clips/2024/a.mp4", dest) == dest
    assert dest.read_bytes() == data

    st = store.stat(BUCKET, "clips/2024/a.mp4")
    assert st is not None
    assert (st.bucket, st.key, st.size) == (BUCKET, "clips/2024/a.mp4", len(data))
    assert st.etag
    assert st.modified is not None
    assert store.exists(BUCKET, "clips/2024/a.mp4")


def test_put_file_overwrites(store: BlobStore, tmp_path: Path) -> None:
    put_bytes(store, tmp_path, "a.txt", b"first version")
    info = put_bytes(store, tmp_path, "a.txt", b"second")
    assert info.size == 6
    assert read(store, "a.txt") == b"second"
    assert keys(store) == ["a.txt"]


def test_empty_object(store: BlobStore, tmp_path: Path) -> None:
    assert put_bytes(store, tmp_path, "empty.bin", b"").size == 0
    assert read(store, "empty.bin") == b""
    st = store.stat(BUCKET, "empty.bin")
    assert st is not None and st.size == 0


def test_delete(store: BlobStore, tmp_path: Path) -> None:
    put_bytes(store, tmp_path, "dir/a.txt", b"a")
    put_bytes(store, tmp_path, "dir/b.txt", b"b")
    store.delete(BUCKET, "dir/a.txt")
    assert not store.exists(BUCKET, "dir/a.txt")
    assert store.stat(BUCKET, "dir/a.txt") is None
    assert keys(store) == ["dir/b.txt"]
    store.delete(BUCKET, "dir/a.txt")  # deleting a missing object is not an error
    store.delete(BUCKET, "never/existed.txt")


def test_missing_object(store: BlobStore, tmp_path: Path) -> None:
    put_bytes(store, tmp_path, "there.txt", b"x")
    assert store.stat(BUCKET, "missing.txt") is None
    assert not store.exists(BUCKET, "missing.txt")
    with pytest.raises(ObjectNotFound):
        store.get_file(BUCKET, "missing.txt", tmp_path / "out.txt")
    with pytest.raises(ObjectNotFound):
        store.open(BUCKET, "missing.txt")
    assert not (tmp_path / "out.txt").exists()
    # in a bucket never used
    with pytest.raises(ObjectNotFound):
        store.open("never-used", "there.txt")
    assert store.stat("never-used", "there.txt") is None


def test_a_prefix_is_not_an_object(store: BlobStore, tmp_path: Path) -> None:
    put_bytes(store, tmp_path, "folder/inner.txt", b"x")
    assert store.stat(BUCKET, "folder") is None
    assert not store.exists(BUCKET, "folder")
    with pytest.raises(ObjectNotFound):
        store.open(BUCKET, "folder")
    with pytest.raises(ObjectNotFound):
        store.get_file(BUCKET, "folder", tmp_path / "out")


def test_buckets_are_separate(store: BlobStore, tmp_path: Path) -> None:
    put_bytes(store, tmp_path, "same.txt", b"in input", bucket="input")
    put_bytes(store, tmp_path, "same.txt", b"in output", bucket="output")
    assert read(store, "same.txt", bucket="input") == b"in input"
    assert read(store, "same.txt", bucket="output") == b"in output"
    store.delete("input", "same.txt")
    assert store.exists("output", "same.txt")


# -- list ------------------------------------------------------------------------
LIST_KEYS = [
    "a/1.txt",
    "a/2.txt",
    "a/b/3.txt",
    "a-x.txt",  # '-' sorts before '/': key order, not directory-walk order
    "a1.txt",
    "b/1.txt",
    "z.txt",
    "视频/会议.mp4",
]


@pytest.fixture
def listed(store: BlobStore, tmp_path: Path) -> BlobStore:
    for i, key in enumerate(LIST_KEYS):
        put_bytes(store, tmp_path, key, b"x" * i)
    return store


def test_list_everything_in_key_order(listed: BlobStore) -> None:
    objs = list(listed.list(BUCKET))
    assert [o.key for o in objs] == sorted(LIST_KEYS)
    assert {o.key: o.size for o in objs} == {k: i for i, k in enumerate(LIST_KEYS)}
    assert all(o.bucket == BUCKET for o in objs)


@pytest.mark.parametrize("prefix", ["a/", "a", "a/b/", "b", "视频/", "nothing", ""])
def test_list_prefix(listed: BlobStore, prefix: str) -> None:
    assert keys(listed, prefix=prefix) == sorted(k for k in LIST_KEYS if k.startswith(prefix))


@pytest.mark.parametrize("start_after", ["a/1.txt", "a/15", "a1.txt", "", "z.txt", "zzz"])
def test_list_start_after(listed: BlobStore, start_after: str) -> None:
    expected = sorted(k for k in LIST_KEYS if k > start_after)
    assert keys(listed, start_after=start_after) == expected


def test_list_prefix_and_start_after(listed: BlobStore) -> None:
    assert keys(listed, prefix="a/", start_after="a/1.txt") == ["a/2.txt", "a/b/3.txt"]
    # paging a prefix with start_after = last key seen
    seen: list[str] = []
    after: str | None = None
    while True:
        page = [o.key for _, o in zip(range(2), listed.list(BUCKET, "a", after), strict=False)]
        if not page:
            break
        seen.extend(page)
        after = page[-1]
    assert seen == sorted(k for k in LIST_KEYS if k.startswith("a"))


def test_list_of_an_unused_bucket_is_empty(store: BlobStore) -> None:
    assert keys(store, bucket="never-used") == []


# -- writer ------------------------------------------------------------------------
def test_writer_commit_makes_the_object_visible(store: BlobStore) -> None:
    w = store.writer(BUCKET, "out/big.bin", content_type="application/octet-stream")
    chunks = [bytes([i % 251]) * (64 * 1024 + i) for i in range(48)]  # ~3 MiB, odd sizes
    for chunk in chunks:
        w.write(chunk)
    data = b"".join(chunks)
    assert w.written == len(data)

    # not visible before commit
    assert store.stat(BUCKET, "out/big.bin") is None
    assert not store.exists(BUCKET, "out/big.bin")
    assert keys(store) == []
    with pytest.raises(ObjectNotFound):
        store.open(BUCKET, "out/big.bin")

    info = w.commit()
    assert (info.bucket, info.key, info.size) == (BUCKET, "out/big.bin", len(data))
    assert hashlib.sha256(read(store, "out/big.bin")).digest() == hashlib.sha256(data).digest()
    assert keys(store) == ["out/big.bin"]


def test_writer_abort_leaves_nothing(store: BlobStore) -> None:
    w = store.writer(BUCKET, "out/aborted.bin")
    w.write(b"partial data" * 1000)
    w.abort()
    assert store.stat(BUCKET, "out/aborted.bin") is None
    assert keys(store) == []
    assert keys(store, prefix="out/") == []


def test_writer_over_an_existing_object_swaps_it_at_commit(
    store: BlobStore, tmp_path: Path
) -> None:
    put_bytes(store, tmp_path, "report.pdf", b"old contents")
    w = store.writer(BUCKET, "report.pdf")
    w.write(b"new")
    assert read(store, "report.pdf") == b"old contents"
    st = store.stat(BUCKET, "report.pdf")
    assert st is not None and st.size == len(b"old contents")
    w.commit()
    assert read(store, "report.pdf") == b"new"

    w2 = store.writer(BUCKET, "report.pdf")
    w2.write(b"discarded")
    w2.abort()
    assert read(store, "report.pdf") == b"new"


def test_uncommitted_writers_are_invisible_to_list(store: BlobStore, tmp_path: Path) -> None:
    put_bytes(store, tmp_path, "done/a.txt", b"a")
    pending = [store.writer(BUCKET, f"done/pending-{i}.txt") for i in range(3)]
    for w in pending:
        w.write(b"...")
    assert keys(store) == ["done/a.txt"]
    assert keys(store, prefix="done/") == ["done/a.txt"]
    pending[0].commit()
    pending[1].abort()
    assert keys(store) == ["done/a.txt", "done/pending-0.txt"]
    pending[2].abort()


# -- unicode ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "key",
    [
        "视频/会议记录 2024-05-01.mp4",
        "文档/季度报告（最终版）.pdf",
        "données/été/résumé.txt",
        "emoji/🎬 trailer.mov",
        "with spaces/and #hash & 'quotes' + plus=.txt",
        "a" * MAX_SEGMENT_BYTES,
        "中" * (MAX_SEGMENT_BYTES // 3),  # 255 bytes of 3-byte characters
    ],
)
def test_unicode_and_unusual_keys_work(store: BlobStore, tmp_path: Path, key: str) -> None:
    data = key.encode()
    info = put_bytes(store, tmp_path, key, data)
    assert info.key == key
    assert read(store, key) == data
    dest = tmp_path / "dest.bin"
    store.get_file(BUCKET, key, dest)
    assert dest.read_bytes() == data
    st = store.stat(BUCKET, key)
    assert st is not None and st.key == key and st.size == len(data)
    assert keys(store) == [key]
    prefix = key.split("/")[0]
    assert keys(store, prefix=prefix) == [key]
    store.delete(BUCKET, key)
    assert not store.exists(BUCKET, key)


def test_longest_valid_key_works(store: BlobStore, tmp_path: Path) -> None:
    segs = ["a" * 255, "b" * 255, "c" * 255, "d" * 254, "e"]
    key = "/".join(segs)
    assert len(key.encode()) == MAX_KEY_BYTES
    put_bytes(store, tmp_path, key, b"deep")
    assert read(store, key) == b"deep"
    assert keys(store) == [key]


# -- key validation --------------------------------------------------------------
INVALID_KEYS = [
    # (key, what the message must say)
    ("", r"empty"),
    ("..", r"'\.\.'"),
    ("../etc/passwd", r"'\.\.'"),
    ("a/../../b", r"'\.\.'"),
    ("a/..", r"'\.\.'"),
    ("./x", r"'\.'"),
    ("a/./b", r"'\.'"),
    ("/etc/passwd", r"absolute"),
    ("/a", r"absolute"),
    ("C:/Windows/x", r"absolute"),
    ("c:x", r"absolute"),
    ("\\\\server\\share", r"absolute"),
    ("a\x00b", r"NUL"),
    ("\x00", r"NUL"),
    ("a\nb", r"control"),
    ("a\rb", r"control"),
    ("a\tb", r"control"),
    ("a\x1b[31mred", r"control"),
    ("a\x1fb", r"control"),
    ("a\x7fb", r"control"),  # DEL
    ("a\x85b", r"control"),  # C1 NEL: a line break for str.splitlines()
    ("a\x9b31mb", r"control"),  # C1 CSI: a terminal escape
    ("x" * (MAX_KEY_BYTES + 1), r"longer than 1024"),
    ("/".join(["a" * 200] * 6), r"longer than 1024"),
    ("中" * 342, r"longer than 1024"),  # 1026 bytes, 342 characters
    ("a/" + "s" * (MAX_SEGMENT_BYTES + 1), r"segment longer than 255"),
    ("中" * 86, r"segment longer than 255"),  # 258 bytes, 86 characters
    ("a//b", r"empty"),
    ("a/", r"empty"),
    ("a/b/", r"empty"),
    ("a\\b", r"backslash"),
    ("a/b\\..\\c", r"backslash"),
    ("\\x", r"absolute|backslash"),
    (".conveyor-tmp/abc", r"reserved"),
    ("a/.conveyor-tmp/abc", r"reserved"),
]


@pytest.mark.parametrize(
    ("key", "reason"), INVALID_KEYS, ids=[repr(k)[:40] for k, _ in INVALID_KEYS]
)
def test_invalid_keys_are_rejected_by_every_operation(
    store: BlobStore, tmp_path: Path, key: str, reason: str
) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload")
    ops: dict[str, Callable[[], object]] = {
        "put_file": lambda: store.put_file(BUCKET, key, src),
        "writer": lambda: store.writer(BUCKET, key),
        "get_file": lambda: store.get_file(BUCKET, key, tmp_path / "dest.bin"),
        "open": lambda: store.open(BUCKET, key),
        "stat": lambda: store.stat(BUCKET, key),
        "exists": lambda: store.exists(BUCKET, key),
        "delete": lambda: store.delete(BUCKET, key),
    }
    for name, op in ops.items():
        with pytest.raises(InvalidKey) as exc:
            op()
        assert re.search(reason, str(exc.value)), f"{name}: {exc.value}"
        assert exc.value.code == "invalid_key"
    assert keys(store) == []
    assert not (tmp_path / "dest.bin").exists()


def test_almost_invalid_keys_are_fine(store: BlobStore, tmp_path: Path) -> None:
    for key in ["a..b", "...", "a/.hidden", "..a/b..", "a.b/c.d", "x~y/@z", "dot./x"]:
        put_bytes(store, tmp_path, key, key.encode())
        assert read(store, key) == key.encode()


INVALID_BUCKETS = [
    "",
    "ab",
    "a" * 64,
    "UPPER",
    "Mixed-Case",
    "-leading",
    "trailing-",
    ".leading",
    "trailing.",
    "a..b",
    "a/b",
    "../up",
    "..",
    "under_score",
    "sp ace",
    "buck\x00et",
    "视频桶",
]


@pytest.mark.parametrize("bucket", INVALID_BUCKETS, ids=[repr(b)[:30] for b in INVALID_BUCKETS])
def test_invalid_bucket_names_are_rejected(store: BlobStore, tmp_path: Path, bucket: str) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload")
    ops: dict[str, Callable[[], object]] = {
        "put_file": lambda: store.put_file(bucket, "a.txt", src),
        "writer": lambda: store.writer(bucket, "a.txt"),
        "get_file": lambda: store.get_file(bucket, "a.txt", tmp_path / "dest.bin"),
        "open": lambda: store.open(bucket, "a.txt"),
        "stat": lambda: store.stat(bucket, "a.txt"),
        "delete": lambda: store.delete(bucket, "a.txt"),
        "list": lambda: list(store.list(bucket)),
    }
    for name, op in ops.items():
        with pytest.raises(InvalidKey, match="bucket") as exc:
            op()
        assert exc.value.code == "invalid_key", name


@pytest.mark.parametrize("bucket", ["abc", "my-bucket", "media.2024", "a" * 63, "0in0"])
def test_valid_bucket_names_work(store: BlobStore, tmp_path: Path, bucket: str) -> None:
    put_bytes(store, tmp_path, "a.txt", b"ok", bucket=bucket)
    assert read(store, "a.txt", bucket=bucket) == b"ok"
    assert keys(store, bucket=bucket) == ["a.txt"]


# -- staging (conveyor.outputs) ----------------------------------------------------
def staged_key(store: BlobStore) -> str:
    """A staging key the store takes: through the API (a remote worker's store) only the
    attempt holding a task's lease writes it, so one is claimed on the API's engine."""
    task_id, attempt = "01task", 1
    if isinstance(store, RemoteBlobStore):
        from conveyor.models import Task
        from tests.remote_contract import shared_api

        backend = shared_api().service.backend
        task, _ = backend.submit(Task(kind="stage-test"))
        (claimed,) = backend.claim("w-stage", ["stage-test"], 1, 300.0)
        task_id, attempt = task.id, claimed.lease.attempt
    return f".conveyor-staging/{task_id}/01stamp-{attempt}/clips/a/mp4.mp4"


def test_staged_objects_are_stored_but_never_listed_with_user_keys(
    store: BlobStore, tmp_path: Path
) -> None:
    STAGED = staged_key(store)
    task_folder = STAGED.rsplit("/", 4)[0] + "/"
    put_bytes(store, tmp_path, "clips/a.mp4", b"user")
    put_bytes(store, tmp_path, STAGED, b"staged")
    assert read(store, STAGED) == b"staged"
    assert store.stat(BUCKET, STAGED) is not None
    assert keys(store) == ["clips/a.mp4"], "a listing of the bucket shows no staging"
    assert keys(store, prefix=".conveyor") == []
    if isinstance(store, RemoteBlobStore):  # a worker lists one task's staging, no more
        with pytest.raises(InvalidKey):
            keys(store, prefix=".conveyor-staging/")
    else:
        assert keys(store, prefix=".conveyor-staging/") == [STAGED]
    assert keys(store, prefix=task_folder) == [STAGED]
    if isinstance(store, RemoteBlobStore):  # ... and only of a task it runs
        with pytest.raises(LeaseLost):
            keys(store, prefix=".conveyor-staging/other/")
    else:
        assert keys(store, prefix=".conveyor-staging/other/") == []


@pytest.mark.parametrize(
    "key",
    [".conveyor-staging/../x", ".conveyor-staging/", ".conveyor-staging//x", ".conveyor-tmp/x"],
)
def test_staging_keys_are_checked_like_user_keys(
    store: BlobStore, tmp_path: Path, key: str
) -> None:
    with pytest.raises(InvalidKey):
        put_bytes(store, tmp_path, key, b"x")


def test_promote_moves_a_staged_object_to_its_final_key(store: BlobStore, tmp_path: Path) -> None:
    STAGED = staged_key(store)
    put_bytes(store, tmp_path, "clips/a/mp4.mp4", b"old")
    put_bytes(store, tmp_path, STAGED, b"new bytes")
    info = store.promote(BUCKET, STAGED, "clips/a/mp4.mp4")
    assert (info.key, info.size) == ("clips/a/mp4.mp4", 9)
    assert info.content_type == "video/mp4"
    assert read(store, "clips/a/mp4.mp4") == b"new bytes"
    assert store.stat(BUCKET, STAGED) is None
    assert keys(store, prefix=STAGED.rsplit("/", 4)[0] + "/") == []
    with pytest.raises(ObjectNotFound):  # a second mover finds it gone
        store.promote(BUCKET, STAGED, "clips/a/mp4.mp4")
    assert read(store, "clips/a/mp4.mp4") == b"new bytes"
