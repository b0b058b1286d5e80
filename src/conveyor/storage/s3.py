"""``s3://`` storage: buckets on any S3-compatible endpoint (AWS, MinIO, SeaweedFS, Ceph).

URL form (every query parameter is optional)::

    s3://?endpoint_url=http://127.0.0.1:8333&region=eu-west-1&profile=media
         &addressing_style=path&bucket_prefix=prod-&listing=walk
         &part_size_mb=8&multipart_threshold_mb=16&max_concurrency=8

Buckets are named per call (the contract's ``bucket`` argument), so the URL
names none.  ``bucket_prefix`` namespaces them for one deployment: bucket
``input`` becomes ``<bucket_prefix>input`` on the server.  A prefixed name
longer than S3's 63 characters is shortened and given a hash suffix, so every
valid bucket name still maps to one valid, distinct S3 bucket.

Endpoint, region and credentials come from boto3's standard chain when the
URL does not name them: ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``,
``AWS_REGION``, ``AWS_ACCESS_KEY_ID`` ..., the shared config and credentials
files (``profile`` picks a profile), and instance or task roles.  Secrets
never go in the URL; unknown parameters are rejected.  Path-style addressing
is used for any endpoint that is not AWS's own, unless ``addressing_style``
says otherwise.

Writes are atomic: ``put_file`` is one PUT or one completed multipart upload
(boto3's managed transfer: multipart above ``multipart_threshold_mb``, parts of
``part_size_mb``, ``max_concurrency`` at a time), and ``writer()`` is a single
PUT for an object smaller than a part, else a multipart upload whose parts go
up while the caller writes (at most four parts in memory besides the one
being filled); either way a reader sees the whole object or none, and an
aborted or failed write leaves no parts behind.  A bucket is created on the
first write to it if it does not exist.

Keys and bucket names are checked by ``validate_key`` / ``validate_bucket``
before any request.  Objects other tools wrote under keys this store would
refuse (a console's ``folder/`` markers, ``.conveyor*`` names) are not listed.

``url()`` presigns a GET for the client's endpoint (the API's download path
redirects to it), so the endpoint must be one the API's clients can reach.

``listing``: S3 promises keys in UTF-8 byte order, but filer-backed servers
(SeaweedFS among them) list a folder ``a/`` where ``a`` would sort, before
``a-x.txt`` and ``a.txt``.  ``walk`` (the default) lists one folder level at a
time with ``Delimiter='/'`` and merges each level into true key order with a
small heap, so the order is right on every server; it costs one request per
folder.  ``flat`` issues one paginated listing with ``StartAfter``: fewer
requests, and ``StartAfter`` is applied by the server rather than by skipping
entries client-side; only for servers known to list in S3 order (AWS, MinIO,
Ceph).
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import io
import mimetypes
import os
import re
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, cast
from urllib.parse import parse_qs, urlparse

import boto3
import botocore.loaders
import botocore.session
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from conveyor.errors import InvalidRequest, ObjectNotFound
from conveyor.storage.base import (
    BlobStore,
    BlobWriter,
    ObjectInfo,
    listable,
    validate_bucket,
    validate_stored_key,
)

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer
    from botocore.response import StreamingBody
    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_s3.literals import BucketLocationConstraintType
    from mypy_boto3_s3.type_defs import (
        CompletedPartTypeDef,
        HeadObjectOutputTypeDef,
        PaginatorConfigTypeDef,
    )

_Style = Literal["auto", "virtual", "path"]

MiB = 1024 * 1024
MIN_PART_SIZE = 5 * MiB  # S3's minimum for every part but the last
MAX_PART_SIZE = 5 * 1024 * MiB
MAX_BUCKET_LEN = 63
MAX_PRESIGN_S = 7 * 24 * 3600  # SigV4's limit
_PREFIX_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{0,39}$")
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NoSuchBucket", "NotFound"})
_AWS_HOST_RE = re.compile(r"(^|\.)amazonaws\.com(\.cn)?$")

_PARAMS = {
    "endpoint_url",
    "region",
    "profile",
    "addressing_style",
    "bucket_prefix",
    "listing",
    "part_size_mb",
    "multipart_threshold_mb",
    "max_concurrency",
}


_loader_lock = threading.Lock()
_loader: botocore.loaders.Loader | None = None


def new_session(profile: str | None = None, region: str | None = None) -> boto3.session.Session:
    """A new boto3 session (credentials resolved afresh) sharing botocore's parsed models.

    Parsing the S3 model and endpoint rules costs ~0.3 s and ~20 MB per session;
    every store (and any helper client) made this way pays it once per process.
    """
    global _loader
    with _loader_lock:
        if _loader is None:
            _loader = botocore.loaders.create_loader()
        loader = _loader
    core = botocore.session.Session(profile=profile)
    core.register_component("data_loader", loader)
    return boto3.session.Session(botocore_session=core, region_name=region)


def _code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def _status(err: ClientError) -> int:
    return int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _is_not_found(err: ClientError) -> bool:
    return _code(err) in _NOT_FOUND or _status(err) == 404


# user metadata on a promoted object: which staged object it was copied from (hashed:
# metadata is ASCII, a key need not be)
PROMOTED_FROM = "conveyor-promoted-from"


def _promoted_from(src: str) -> str:
    return hashlib.sha256(src.encode()).hexdigest()[:32]


def _etag(raw: str | None) -> str:
    return (raw or "").strip('"')


def _guess_type(key: str) -> str | None:
    return mimetypes.guess_type(key)[0]


class _BodyReader(io.RawIOBase):
    """A botocore ``StreamingBody`` as a raw stream, closed with the reader."""

    def __init__(self, body: StreamingBody) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self._body.read(len(view))
        n = len(data)
        view[:n] = data
        return n

    def readall(self) -> bytes:
        return self._body.read()

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(Exception):
                self._body.close()
        super().close()


class _S3Writer(BlobWriter):
    """Buffers up to one part; a single PUT on commit if the object stays that small.

    Parts are uploaded by a small thread pool while the caller keeps writing
    (at most ``max_inflight`` parts in memory besides the one being filled).
    Nothing is visible until ``complete_multipart_upload``; ``abort`` (or any
    error) aborts the upload so no parts are left behind.
    """

    def __init__(
        self,
        store: S3BlobStore,
        bucket: str,
        physical: str,
        key: str,
        content_type: str,
        part_size: int,
        max_inflight: int,
    ) -> None:
        self._store = store
        self._bucket = bucket
        self._physical = physical
        self._key = key
        self._content_type = content_type
        self._base_part_size = part_size
        self._max_inflight = max(1, max_inflight)
        self._buf = bytearray()
        self._written = 0
        self._upload_id: str | None = None
        self._part_no = 0
        self._pending: deque[Future[CompletedPartTypeDef]] = deque()
        self._parts: list[CompletedPartTypeDef] = []
        self._pool: ThreadPoolExecutor | None = None
        self._state = "open"  # open | committed | aborted

    @property
    def written(self) -> int:
        return self._written

    def _part_size(self, part_no: int) -> int:
        # S3 allows 10,000 parts: double the part size every 1,000 parts
        size = self._base_part_size << ((part_no - 1) // 1000)
        return min(size, MAX_PART_SIZE)

    def write(self, data: bytes) -> None:
        if self._state != "open":
            raise ValueError(f"writer for {self._bucket}/{self._key} is already {self._state}")
        try:
            self._buf += data
            self._written += len(data)
            while len(self._buf) >= self._part_size(self._part_no + 1):
                self._send_part(self._part_size(self._part_no + 1))
        except BaseException:
            self.abort()
            raise

    def _send_part(self, size: int) -> None:
        if len(self._buf) == size:  # the usual case: hand the buffer over, no copy
            chunk, self._buf = self._buf, bytearray()
        else:
            chunk = self._buf[:size]
            del self._buf[:size]
        client = self._store.client
        if self._upload_id is None:
            self._store._ensure_bucket(self._physical)
            resp = client.create_multipart_upload(
                Bucket=self._physical, Key=self._key, ContentType=self._content_type
            )
            self._upload_id = resp["UploadId"]
            self._pool = ThreadPoolExecutor(
                max_workers=self._max_inflight, thread_name_prefix="s3-part"
            )
        while len(self._pending) >= self._max_inflight:
            self._parts.append(self._pending.popleft().result())
        self._part_no += 1
        assert self._pool is not None
        self._pending.append(self._pool.submit(self._upload_part, self._part_no, chunk))

    def _upload_part(self, part_no: int, chunk: bytearray) -> CompletedPartTypeDef:
        assert self._upload_id is not None
        resp = self._store.client.upload_part(
            Bucket=self._physical,
            Key=self._key,
            UploadId=self._upload_id,
            PartNumber=part_no,
            Body=cast(bytes, chunk),  # botocore takes a bytearray as a blob; no copy
        )
        return {"PartNumber": part_no, "ETag": resp["ETag"]}

    def commit(self) -> ObjectInfo:
        if self._state != "open":
            raise ValueError(f"writer for {self._bucket}/{self._key} is already {self._state}")
        client = self._store.client
        try:
            if self._upload_id is None:
                body = bytes(self._buf)
                self._buf.clear()
                self._store._put_small(self._physical, self._key, body, self._content_type)
            else:
                if self._buf:
                    self._send_part(len(self._buf))
                while self._pending:
                    self._parts.append(self._pending.popleft().result())
                self._parts.sort(key=lambda p: p.get("PartNumber", 0))
                client.complete_multipart_upload(
                    Bucket=self._physical,
                    Key=self._key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                )
                self._upload_id = None
                self._shutdown_pool()
        except BaseException:
            self.abort()
            raise
        self._state = "committed"
        return self._store._info_after_write(self._bucket, self._physical, self._key, self._written)

    def abort(self) -> None:
        if self._state != "open":
            return
        self._state = "aborted"
        self._buf = bytearray()
        for fut in self._pending:
            fut.cancel()
        for fut in self._pending:
            with contextlib.suppress(BaseException):
                fut.result()
        self._pending.clear()
        self._shutdown_pool()
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            with contextlib.suppress(ClientError, BotoCoreError):  # best effort
                self._store.client.abort_multipart_upload(
                    Bucket=self._physical, Key=self._key, UploadId=upload_id
                )

    def _shutdown_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class S3BlobStore(BlobStore):
    """One boto3 client (thread-safe) per store; see the module docstring for the URL."""

    url_scheme = "s3"

    def __init__(
        self,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        profile: str | None = None,
        addressing_style: str | None = None,
        bucket_prefix: str = "",
        listing: str = "walk",
        part_size: int = 8 * MiB,
        multipart_threshold: int = 16 * MiB,
        max_concurrency: int = 8,
        list_page_size: int | None = None,
    ) -> None:
        if bucket_prefix and not _PREFIX_RE.match(bucket_prefix):
            raise InvalidRequest(
                f"invalid bucket_prefix {bucket_prefix!r}: use up to 40 lowercase letters, "
                "digits, '.' or '-', starting with a letter or digit"
            )
        if listing not in ("walk", "flat"):
            raise InvalidRequest(f"invalid listing {listing!r}: expected 'walk' or 'flat'")
        style: _Style
        if addressing_style is None or addressing_style == "auto":
            style = "auto"
        elif addressing_style == "path":
            style = "path"
        elif addressing_style == "virtual":
            style = "virtual"
        else:
            raise InvalidRequest(
                f"invalid addressing_style {addressing_style!r}: expected path, virtual or auto"
            )
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise InvalidRequest(f"part size must be between 5 MiB and 5 GiB, not {part_size}")
        if multipart_threshold < MIN_PART_SIZE:
            raise InvalidRequest("multipart threshold must be at least 5 MiB")
        if not 1 <= max_concurrency <= 64:
            raise InvalidRequest("max_concurrency must be between 1 and 64")
        self.bucket_prefix = bucket_prefix
        self.listing = listing
        self.part_size = part_size
        self.max_concurrency = max_concurrency
        self.list_page_size = list_page_size  # None: the server's (1000 on S3)
        self.transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=part_size,
            max_concurrency=max_concurrency,
            max_io_queue=16,  # downloads: at most 16 x 256 KiB waiting for the disk
            use_threads=True,
        )
        session = new_session(profile, region)
        hint = (
            endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
        if addressing_style is None and hint and not self._is_aws(hint):
            style = "path"  # MinIO, SeaweedFS, Ceph ...: no bucket DNS names
        self.client = self._make_client(session, endpoint_url, style)
        if addressing_style is None and not self._is_aws(self.client.meta.endpoint_url):
            # an endpoint named by the profile's config: path-style URLs there too
            self.client = self._make_client(session, endpoint_url, "path")
        self._known_buckets: set[str] = set()
        self._lock = threading.Lock()

    def _make_client(
        self, session: boto3.session.Session, endpoint_url: str | None, style: _Style
    ) -> S3Client:
        config = Config(
            signature_version="s3v4",
            retries={"mode": "standard", "max_attempts": 5},
            max_pool_connections=max(32, self.max_concurrency * 2),
            connect_timeout=10,
            read_timeout=120,
            s3={"addressing_style": style},
        )
        return session.client("s3", endpoint_url=endpoint_url, config=config)

    @staticmethod
    def _is_aws(endpoint: str) -> bool:
        host = urlparse(endpoint).hostname or ""
        return bool(_AWS_HOST_RE.search(host))

    @classmethod
    def from_url(cls, url: str) -> S3BlobStore:
        parsed = urlparse(url)
        if parsed.scheme != "s3":
            raise InvalidRequest(f"not an s3:// storage URL: {url!r}")
        if parsed.netloc or parsed.path not in ("", "/"):
            raise InvalidRequest(
                f"unsupported storage URL {url!r}: write s3:// with query parameters only "
                "(buckets are named per call; use ?bucket_prefix=... to namespace them)"
            )
        query = parse_qs(parsed.query, keep_blank_values=True)
        unknown = sorted(set(query) - _PARAMS)
        if unknown:
            raise InvalidRequest(
                f"unknown s3 storage URL parameter(s) {', '.join(unknown)}: expected "
                f"{', '.join(sorted(_PARAMS))} (credentials come from the AWS chain, "
                "never from the URL)"
            )
        opts = {k: v[-1] for k, v in query.items() if v and v[-1] != ""}

        def number(name: str, default: int, scale: int = 1) -> int:
            if name not in opts:
                return default
            try:
                return int(float(opts[name]) * scale)
            except ValueError:
                raise InvalidRequest(f"s3 storage URL: {name} must be a number") from None

        return cls(
            endpoint_url=opts.get("endpoint_url"),
            region=opts.get("region"),
            profile=opts.get("profile"),
            addressing_style=opts.get("addressing_style"),
            bucket_prefix=opts.get("bucket_prefix", ""),
            listing=opts.get("listing", "walk"),
            part_size=number("part_size_mb", 8 * MiB, MiB),
            multipart_threshold=number("multipart_threshold_mb", 16 * MiB, MiB),
            max_concurrency=number("max_concurrency", 8),
        )

    # -- names ---------------------------------------------------------------
    def physical_bucket(self, bucket: str) -> str:
        """The bucket's name on the server (``bucket_prefix`` + ``bucket``)."""
        validate_bucket(bucket)
        name = self.bucket_prefix + bucket
        if len(name) > MAX_BUCKET_LEN:
            digest = hashlib.sha256(bucket.encode()).hexdigest()[:10]
            head = name[: MAX_BUCKET_LEN - len(digest) - 1].rstrip(".-")
            name = f"{head}-{digest}"
        return name

    def _names(self, bucket: str, key: str) -> tuple[str, str]:
        physical = self.physical_bucket(bucket)
        return physical, validate_stored_key(key)

    def _ensure_bucket(self, physical: str) -> None:
        """Create the bucket on first write; a HEAD per bucket per process."""
        with self._lock:
            if physical in self._known_buckets:
                return
        try:
            self.client.head_bucket(Bucket=physical)
        except ClientError as err:
            if not _is_not_found(err):
                if _status(err) != 403:  # 403: may exist, we just cannot HEAD it
                    raise
            else:
                self._create_bucket(physical)
        with self._lock:
            self._known_buckets.add(physical)

    def _forget_bucket(self, physical: str) -> None:
        with self._lock:
            self._known_buckets.discard(physical)

    def _create_bucket(self, physical: str) -> None:
        region = self.client.meta.region_name
        try:
            if region and region != "us-east-1":
                self.client.create_bucket(
                    Bucket=physical,
                    CreateBucketConfiguration={
                        "LocationConstraint": cast("BucketLocationConstraintType", region)
                    },
                )
            else:
                self.client.create_bucket(Bucket=physical)
        except ClientError as err:
            code = _code(err)
            if code == "BucketAlreadyOwnedByYou":
                return
            if code == "BucketAlreadyExists":
                # some servers say this for our own bucket too (a concurrent create)
                try:
                    self.client.head_bucket(Bucket=physical)
                except ClientError:
                    raise err from None
                return
            raise

    def _put_small(self, physical: str, key: str, body: bytes, content_type: str) -> None:
        self._ensure_bucket(physical)
        try:
            self.client.put_object(Bucket=physical, Key=key, Body=body, ContentType=content_type)
        except ClientError as err:
            if _code(err) != "NoSuchBucket":
                raise
            self._forget_bucket(physical)  # deleted behind our back: create it again
            self._ensure_bucket(physical)
            self.client.put_object(Bucket=physical, Key=key, Body=body, ContentType=content_type)

    def _info_after_write(self, bucket: str, physical: str, key: str, size: int) -> ObjectInfo:
        info = self._stat(bucket, physical, key)
        if info is not None:
            return info
        # deleted again before we could look: report what we wrote
        return ObjectInfo(bucket=bucket, key=key, size=size, modified=datetime.now(UTC))

    # -- contract --------------------------------------------------------------
    def put_file(
        self, bucket: str, key: str, path: Path, content_type: str | None = None
    ) -> ObjectInfo:
        physical, key = self._names(bucket, key)
        self._ensure_bucket(physical)
        extra = {"ContentType": content_type or _guess_type(key) or "application/octet-stream"}
        for attempt in range(2):
            try:
                self.client.upload_file(
                    str(path), physical, key, ExtraArgs=extra, Config=self.transfer
                )
                break
            except S3UploadFailedError as err:
                if attempt or "NoSuchBucket" not in str(err):
                    raise
                self._forget_bucket(physical)
                self._ensure_bucket(physical)
        return self._info_after_write(bucket, physical, key, path.stat().st_size)

    def writer(self, bucket: str, key: str, content_type: str | None = None) -> BlobWriter:
        physical, key = self._names(bucket, key)
        return _S3Writer(
            self,
            bucket,
            physical,
            key,
            content_type or _guess_type(key) or "application/octet-stream",
            self.part_size,
            min(4, self.max_concurrency),
        )

    def get_file(self, bucket: str, key: str, dest: Path) -> Path:
        physical, key = self._names(bucket, key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            # managed download: ranged GETs into a temp file renamed into place
            self.client.download_file(physical, key, str(dest), Config=self.transfer)
        except ClientError as err:
            if _is_not_found(err):
                raise ObjectNotFound(f"object not found: {bucket}/{key}") from None
            raise
        return dest

    def open(self, bucket: str, key: str) -> AbstractContextManager[BinaryIO]:
        physical, key = self._names(bucket, key)
        try:
            resp = self.client.get_object(Bucket=physical, Key=key)
        except ClientError as err:
            if _is_not_found(err):
                raise ObjectNotFound(f"object not found: {bucket}/{key}") from None
            raise
        return io.BufferedReader(_BodyReader(resp["Body"]), buffer_size=1 * MiB)

    def stat(self, bucket: str, key: str) -> ObjectInfo | None:
        physical, key = self._names(bucket, key)
        return self._stat(bucket, physical, key)

    def _head(self, physical: str, key: str) -> HeadObjectOutputTypeDef | None:
        try:
            return self.client.head_object(Bucket=physical, Key=key)
        except ClientError as err:
            if _is_not_found(err):
                return None
            raise

    @staticmethod
    def _info(bucket: str, key: str, head: HeadObjectOutputTypeDef) -> ObjectInfo:
        return ObjectInfo(
            bucket=bucket,
            key=key,
            size=int(head.get("ContentLength", 0)),
            etag=_etag(head.get("ETag")),
            modified=head.get("LastModified"),
            content_type=head.get("ContentType"),
        )

    def _stat(self, bucket: str, physical: str, key: str) -> ObjectInfo | None:
        head = self._head(physical, key)
        return None if head is None else self._info(bucket, key, head)

    def list(
        self, bucket: str, prefix: str = "", start_after: str | None = None
    ) -> Iterator[ObjectInfo]:
        physical = self.physical_bucket(bucket)
        after = start_after or None
        if self.listing == "flat":
            return self._list_flat(bucket, physical, prefix, after)
        return self._list_walk(bucket, physical, prefix, after)

    def _paging(self) -> PaginatorConfigTypeDef:
        return {"PageSize": self.list_page_size} if self.list_page_size else {}

    def _obj_info(self, bucket: str, obj: Any) -> ObjectInfo:
        key = str(obj["Key"])
        return ObjectInfo(
            bucket=bucket,
            key=key,
            size=int(obj.get("Size", 0)),
            etag=_etag(obj.get("ETag")),
            modified=obj.get("LastModified"),
            content_type=_guess_type(key),
        )

    def _list_flat(
        self, bucket: str, physical: str, prefix: str, after: str | None
    ) -> Iterator[ObjectInfo]:
        kwargs: dict[str, Any] = {"Bucket": physical, "Prefix": prefix}
        if after is not None:
            kwargs["StartAfter"] = after
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(**kwargs, PaginationConfig=self._paging()):
                for obj in page.get("Contents", []):
                    key = obj["Key"]
                    if (after is None or key > after) and listable(key, prefix):
                        yield self._obj_info(bucket, obj)
        except ClientError as err:
            if _code(err) != "NoSuchBucket":
                raise

    def _list_walk(
        self, bucket: str, physical: str, prefix: str, after: str | None
    ) -> Iterator[ObjectInfo]:
        """One level under ``prefix``, merged into key order; sub-folders recursively.

        A server lists a level either in key order or, if filer-backed, by
        entry name (folder ``a/`` sorted as ``a``).  In both orders no later
        entry sorts before the largest *name* seen so far, so every buffered
        entry whose key is at most that name can be emitted (folders by
        descending into them).  Only folders waiting for their siblings stay
        in the heap.
        """
        heap: list[tuple[str, int, Any]] = []  # (key or folder prefix, seq, object or None)
        bound = ""
        seq = 0
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=physical, Prefix=prefix, Delimiter="/", PaginationConfig=self._paging()
        )
        try:
            for page in pages:
                for obj in page.get("Contents", []):
                    seq += 1
                    heapq.heappush(heap, (obj["Key"], seq, obj))
                    bound = max(bound, obj["Key"])
                for cp in page.get("CommonPrefixes", []):
                    folder = cp["Prefix"]
                    if len(folder) <= len(prefix) or not folder.startswith(prefix):
                        continue  # not below this level: never loop on a confused server
                    if not listable(folder + "x", prefix):
                        continue  # e.g. the staging root: nothing under it is listed here
                    seq += 1
                    heapq.heappush(heap, (folder, seq, None))
                    bound = max(bound, folder[:-1])
                while heap and heap[0][0] <= bound:
                    yield from self._emit(bucket, physical, heapq.heappop(heap), after)
        except ClientError as err:
            if _code(err) != "NoSuchBucket":
                raise
            return
        while heap:
            yield from self._emit(bucket, physical, heapq.heappop(heap), after)

    def _emit(
        self, bucket: str, physical: str, entry: tuple[str, int, Any], after: str | None
    ) -> Iterator[ObjectInfo]:
        name, _, obj = entry
        if obj is None:  # a folder: every key under it sorts after ``name``
            if after is not None and name < after and not after.startswith(name):
                return  # ... and before ``after``
            yield from self._list_walk(bucket, physical, name, after)
        elif (after is None or name > after) and listable(name, name):
            yield self._obj_info(bucket, obj)

    def delete(self, bucket: str, key: str) -> None:
        physical, key = self._names(bucket, key)
        try:
            self.client.delete_object(Bucket=physical, Key=key)
        except ClientError as err:
            if not _is_not_found(err):
                raise

    def promote(self, bucket: str, src: str, dest: str) -> ObjectInfo:
        """A server-side copy (in parts above the multipart threshold), then the source
        deleted: the bytes never pass through this process.

        The copy is marked with the source it came from, so a promote repeated after
        its copy's answer or its source's delete was lost (an outage, a restart) finds
        the copy made and only deletes the source: a final key is written once."""
        physical, src = self._names(bucket, src)
        _, dest = self._names(bucket, dest)
        head = self._stat(bucket, physical, src)
        if head is None:
            raise ObjectNotFound(f"object not found: {bucket}/{src}")
        marker = _promoted_from(src)
        done = self._head(physical, dest)
        # (header names as the server spelled them: Go servers send X-Amz-Meta-Conveyor-...)
        found: dict[str, str] = done.get("Metadata", {}) if done is not None else {}
        meta = {k.lower(): v for k, v in found.items()}
        if (
            done is not None
            and meta.get(PROMOTED_FROM) == marker
            and int(done.get("ContentLength", -1)) == head.size
        ):
            self.delete(bucket, src)
            return self._info(bucket, dest, done)
        # the type said again: a copy in parts keeps it only with recent s3transfer releases
        extra: dict[str, Any] = {
            "MetadataDirective": "REPLACE",
            "Metadata": {PROMOTED_FROM: marker},
        }
        if head.content_type:
            extra["ContentType"] = head.content_type
        try:
            self.client.copy(
                {"Bucket": physical, "Key": src},
                physical,
                dest,
                ExtraArgs=extra,
                Config=self.transfer,
            )
        except ClientError as err:
            if _is_not_found(err):
                raise ObjectNotFound(f"object not found: {bucket}/{src}") from None
            raise
        self.delete(bucket, src)
        info = self._stat(bucket, physical, dest)
        if info is None:  # replaced or removed again at once; report what was copied
            raise ObjectNotFound(f"object not found after copy: {bucket}/{dest}")
        return info

    def url(self, bucket: str, key: str, expires_s: int = 3600) -> str | None:
        physical, key = self._names(bucket, key)
        if not 1 <= expires_s <= MAX_PRESIGN_S:
            raise InvalidRequest(
                f"a presigned URL lasts 1 s to 7 days ({MAX_PRESIGN_S} s), not {expires_s} s"
            )
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": physical, "Key": key}, ExpiresIn=int(expires_s)
        )

    def presign_put(
        self, bucket: str, key: str, expires_s: int = 3600, content_type: str | None = None
    ) -> tuple[str, dict[str, str]]:
        """A presigned single PUT (and the headers to send with it) for a remote worker.

        The bucket is made first: a presigned PUT cannot create it.  A PUT is
        atomic on S3, so the object appears whole or not at all.
        """
        physical, key = self._names(bucket, key)
        if not 1 <= expires_s <= MAX_PRESIGN_S:
            raise InvalidRequest(
                f"a presigned URL lasts 1 s to 7 days ({MAX_PRESIGN_S} s), not {expires_s} s"
            )
        self._ensure_bucket(physical)
        params: dict[str, str] = {"Bucket": physical, "Key": key}
        headers: dict[str, str] = {}
        if content_type:
            params["ContentType"] = headers["content-type"] = content_type
        url = self.client.generate_presigned_url(
            "put_object", Params=params, ExpiresIn=int(expires_s)
        )
        return url, headers

    @property
    def multipart_threshold(self) -> int:
        return int(self.transfer.multipart_threshold)

    def presign_multipart(
        self,
        bucket: str,
        key: str,
        size: int,
        expires_s: int = 3600,
        content_type: str | None = None,
    ) -> tuple[str, int, Sequence[str]]:
        """Start a multipart upload a remote worker sends itself: ``(upload_id, part_size, urls)``.

        One presigned URL per part (S3 allows 10,000 parts, so parts grow for
        huge files).  Nothing is visible until :meth:`complete_multipart`.
        """
        physical, key = self._names(bucket, key)
        part_size = max(self.part_size, -(-size // 10_000))
        if part_size > MAX_PART_SIZE:
            raise InvalidRequest(f"an object of {size} bytes is too large for S3")
        self._ensure_bucket(physical)
        upload_id = self.client.create_multipart_upload(
            Bucket=physical,
            Key=key,
            ContentType=content_type or "application/octet-stream",
        )["UploadId"]
        urls = [
            self.client.generate_presigned_url(
                "upload_part",
                Params={"Bucket": physical, "Key": key, "UploadId": upload_id, "PartNumber": n},
                ExpiresIn=int(expires_s),
            )
            for n in range(1, max(1, -(-size // part_size)) + 1)
        ]
        return upload_id, part_size, urls

    def complete_multipart(
        self, bucket: str, key: str, upload_id: str, etags: Sequence[str]
    ) -> ObjectInfo:
        physical, key = self._names(bucket, key)
        self.client.complete_multipart_upload(
            Bucket=physical,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={
                "Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, start=1)]
            },
        )
        info = self.stat(bucket, key)
        if info is None:  # pragma: no cover - S3 said it completed
            raise ObjectNotFound(f"object not found after upload: {bucket}/{key}")
        return info

    def abort_multipart(self, bucket: str, key: str, upload_id: str) -> None:
        physical, key = self._names(bucket, key)
        try:
            self.client.abort_multipart_upload(Bucket=physical, Key=key, UploadId=upload_id)
        except ClientError as err:
            if not _is_not_found(err):
                raise

    def ping(self) -> None:
        """A cheap signed call; AccessDenied still proves endpoint and credentials work."""
        try:
            self.client.list_buckets(MaxBuckets=1)
        except ClientError as err:
            if _code(err) != "AccessDenied":
                raise
