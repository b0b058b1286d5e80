"""Files for remote workers: streamed through the API, or presigned URLs on S3.

A remote worker has no storage credentials.  With a local (``file://``)
store the bytes stream through these routes; with a store that can presign
(S3), a download answers ``307`` to a presigned GET and ``/uploads`` hands
out a presigned PUT (presigned parts of a multipart upload above the store's
multipart threshold), so large files go straight between the worker and the
object store.  Keys are validated by the storage contract's own checks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse
from pydantic import BaseModel, Field, StringConstraints

from conveyor.errors import Conflict, InvalidKey, LeaseLost, ObjectNotFound
from conveyor.models import TaskStatus
from conveyor.outputs import staging_owner
from conveyor.service import ConveyorService
from conveyor.service.workers import TaskScopeRefused, check_scope
from conveyor.storage.base import ObjectInfo, is_staging_key, validate_bucket, validate_stored_key
from conveyor.web.deps import get_service

from .routes_worker import Principal, WorkerForbidden, WorkerPrincipal
from .uploads import CHUNK, stream_into_store

router = APIRouter(prefix="/api/worker/v1", tags=["worker"])
Service = Annotated[ConveyorService, Depends(get_service)]

PRESIGN_S = 3600


class ListResponse(BaseModel):
    items: list[ObjectInfo]
    next_start_after: str | None = None


class MultipartTarget(BaseModel):
    """A multipart upload the worker sends itself: part ``n`` (1-based) to ``urls[n-1]``."""

    upload_id: str
    part_size: int
    urls: list[str]


class UploadTarget(BaseModel):
    """Where to PUT an object: a presigned URL, presigned parts, or neither (the API's route)."""

    url: str | None = None
    headers: dict[str, str] = {}
    multipart: MultipartTarget | None = None


class CompleteUpload(BaseModel):
    upload_id: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    etags: list[Annotated[str, StringConstraints(max_length=200)]] = Field(max_length=10_000)


class AbortUpload(BaseModel):
    upload_id: Annotated[str, StringConstraints(min_length=1, max_length=1024)]


@router.get("/files/{bucket}/{key:path}", summary="Download an object (or 307 to a presigned URL)")
async def get_object(bucket: str, key: str, principal: Principal, service: Service) -> Response:
    bucket, key = await _object(principal, bucket, key, service, write=False)
    path = service.file_path(bucket, key)
    if path is not None:
        if not path.is_file():
            raise ObjectNotFound(f"object not found: {bucket}/{key}")
        return FileResponse(path, media_type="application/octet-stream")
    info = await run_in_threadpool(service.file_info, bucket, key)
    if info is None:
        raise ObjectNotFound(f"object not found: {bucket}/{key}")
    url = await run_in_threadpool(service.file_url, bucket, key, PRESIGN_S)
    if url is not None:
        return RedirectResponse(url, status_code=307)

    def chunks() -> Iterator[bytes]:
        with service.open_file(bucket, key) as fh:
            while block := fh.read(CHUNK):
                yield block

    return StreamingResponse(
        chunks(),
        media_type="application/octet-stream",
        headers={"content-length": str(info.size)},
    )


@router.get("/stat/{bucket}/{key:path}", summary="An object's size, etag and time")
async def stat_object(bucket: str, key: str, principal: Principal, service: Service) -> ObjectInfo:
    bucket, key = await _object(principal, bucket, key, service, write=False)
    info = await run_in_threadpool(service.file_info, bucket, key)
    if info is None:
        raise ObjectNotFound(f"object not found: {bucket}/{key}")
    return info


def _writable(principal: WorkerPrincipal, bucket: str, service: ConveyorService) -> None:
    """An enrolled worker writes (and deletes) only in the output bucket, where every
    processor publishes; it reads inputs wherever their tasks name them.  With auth
    off (no credential: ``worker_id`` None) any bucket is open, as for a local worker."""
    out = service.settings.output_bucket
    if principal.worker_id is not None and bucket != out:
        raise WorkerForbidden(f"a worker writes only to the output bucket {out!r}, not {bucket!r}")


class UnstagedWrite(Conflict):
    code = "unstaged_write"


async def _object(
    principal: WorkerPrincipal, bucket: str, key: str, service: ConveyorService, *, write: bool
) -> tuple[str, str]:
    """The validated ``(bucket, key)`` a worker may use.

    Staged objects (conveyor.outputs) are the attempts' own: only the worker running
    the task touches them, and only the attempt that holds the lease now writes or
    deletes under its prefix, so a worker frozen past its lease is refused here
    before a byte lands, whatever its credential.  An enrolled worker writes nothing
    else: every processor stages, and only a completion makes its outputs visible."""
    validate_bucket(bucket)
    if not is_staging_key(key):
        bucket, key = service.check_object(bucket, key)
        scope = principal.scope
        if scope is not None and not write:  # a task credential reads its task's inputs only
            reads = await run_in_threadpool(service.worker_protocol.task_reads, scope[0])
            if (bucket, key) not in reads:
                raise TaskScopeRefused(
                    f"this task credential reads only the inputs of task {scope[0]}, "
                    f"not {bucket}/{key}"
                )
        if write:
            _writable(principal, bucket, service)
            if principal.worker_id is not None:
                raise UnstagedWrite(
                    f"a worker writes only staged outputs of the attempt it runs "
                    f"(.conveyor-staging/<task>/…), not {bucket}/{key}: outputs become "
                    "visible when the task completes (a worker older than this API?)"
                )
        return bucket, key
    validate_stored_key(key)
    owner = staging_owner(key)
    if owner is None:
        raise InvalidKey(f"{key!r} is not a staged object's key")
    # a task credential: its own task's staging (any attempt's, to read), its attempt's to write
    check_scope(principal.scope, owner[0], owner[1] if write else None, "staged objects")
    task = await run_in_threadpool(service.worker_protocol.task, owner[0])
    held = (
        task is not None
        and task.status == TaskStatus.PROCESSING
        and (principal.worker_id is None or task.worker_id == principal.worker_id)
        and (not write or task.attempts == owner[1])
    )
    if not held:  # 409 lease_lost: the attempt is over, not the credential
        raise LeaseLost(
            f"staged objects of task {owner[0]} attempt {owner[1]} belong to the attempt "
            "that holds the task's lease, and this caller does not hold it"
        )
    if write:
        _writable(principal, bucket, service)
    return bucket, key


@router.put("/files/{bucket}/{key:path}", summary="Upload an object (raw body, streamed)")
async def put_object(
    bucket: str, key: str, request: Request, principal: Principal, service: Service
) -> ObjectInfo:
    bucket, key = await _object(principal, bucket, key, service, write=True)
    content_type = request.headers.get("content-type")
    if content_type == "application/octet-stream":
        content_type = None
    info = await stream_into_store(request, service, bucket, key, content_type, allow_empty=True)
    return info


@router.delete("/files/{bucket}/{key:path}", status_code=204, summary="Delete an object")
async def delete_object(bucket: str, key: str, principal: Principal, service: Service) -> Response:
    bucket, key = await _object(principal, bucket, key, service, write=True)
    await run_in_threadpool(service.delete_file, bucket, key)
    return Response(status_code=204)


@router.get("/list/{bucket}", summary="Objects under a prefix, in key order, one page")
async def list_objects(
    bucket: str,
    principal: Principal,
    service: Service,
    prefix: str = "",
    start_after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
) -> ListResponse:
    validate_bucket(bucket)  # keys listed come from the engine, which never yields a bad one
    if principal.scope is not None and not is_staging_key(prefix):
        raise TaskScopeRefused(
            f"this task credential lists only its own task's staging "
            f"(.conveyor-staging/{principal.scope[0]}/), not {bucket}/{prefix}"
        )
    if is_staging_key(prefix):  # one task's staging, to the worker running it (checkpoints)
        task_id = prefix.split("/")[1] if prefix.count("/") >= 2 else ""
        if not task_id:
            raise InvalidKey("list staged objects one task at a time: .conveyor-staging/<task>/")
        await _object(
            principal, bucket, f"{prefix.split('/')[0]}/{task_id}/0-0/x", service, write=False
        )

    def page() -> ListResponse:
        items: list[ObjectInfo] = []
        for info in service.list_files(bucket, prefix, start_after):
            items.append(info)
            if len(items) == limit:
                return ListResponse(items=items, next_start_after=info.key)
        return ListResponse(items=items)

    return await run_in_threadpool(page)


@router.post("/uploads/{bucket}/{key:path}", summary="Where to PUT an object")
async def upload_target(
    bucket: str,
    key: str,
    principal: Principal,
    service: Service,
    size: Annotated[int, Query(ge=0)] = 0,
    content_type: str | None = None,
) -> UploadTarget:
    """A presigned PUT when the store can make one; presigned parts above its multipart threshold.

    Stores that cannot presign (a local folder) answer with neither: the
    worker then streams the object through ``PUT /files``.
    """
    bucket, key = await _object(principal, bucket, key, service, write=True)
    target = await run_in_threadpool(
        service.worker_protocol.upload_target, bucket, key, size, content_type, PRESIGN_S
    )
    if target.multipart is not None:
        upload_id, part_size, urls = target.multipart
        return UploadTarget(
            multipart=MultipartTarget(upload_id=upload_id, part_size=part_size, urls=urls)
        )
    if target.url is None:
        return UploadTarget()
    return UploadTarget(url=target.url, headers=target.headers)


@router.post(
    "/multipart/complete/{bucket}/{key:path}", summary="Finish a presigned multipart upload"
)
async def complete_upload(
    bucket: str, key: str, body: CompleteUpload, principal: Principal, service: Service
) -> ObjectInfo:
    bucket, key = await _object(principal, bucket, key, service, write=True)
    return await run_in_threadpool(
        service.worker_protocol.complete_multipart, bucket, key, body.upload_id, list(body.etags)
    )


@router.post(
    "/multipart/abort/{bucket}/{key:path}", status_code=204, summary="Drop a multipart upload"
)
async def abort_upload(
    bucket: str, key: str, body: AbortUpload, principal: Principal, service: Service
) -> Response:
    bucket, key = await _object(principal, bucket, key, service, write=True)
    await run_in_threadpool(service.worker_protocol.abort_multipart, bucket, key, body.upload_id)
    return Response(status_code=204)
