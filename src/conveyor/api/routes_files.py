"""Upload and download for stores the client cannot reach directly.

Uploads stream to the store's staging area and become visible only when
complete, so the upload trigger never sees half a file.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, RedirectResponse, Response

from conveyor.errors import InvalidRequest, ObjectNotFound, PayloadTooLarge
from conveyor.service import ConveyorService, upload_dedup_key

from .deps import get_service
from .security import Permission, require

router = APIRouter(prefix="/api/files", tags=["files"])


@router.put(
    "/{bucket}/{key:path}",
    status_code=201,
    summary="Upload an object (raw body)",
    dependencies=[require(Permission.FILES_WRITE)],
)
async def put_file(
    bucket: str, key: str, request: Request, service: ConveyorService = Depends(get_service)
) -> dict[str, Any]:
    bucket, key = service.check_object(bucket, key)
    limit = service.settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"upload of {declared} bytes exceeds the limit of {limit} bytes")
    writer = await run_in_threadpool(
        service.storage.writer, bucket, key, request.headers.get("content-type")
    )
    try:
        buf = bytearray()
        async for chunk in request.stream():
            buf += chunk
            if writer.written + len(buf) > limit:
                raise PayloadTooLarge(f"upload exceeds the limit of {limit} bytes")
            if len(buf) >= 1 << 20:
                await run_in_threadpool(writer.write, bytes(buf))
                buf.clear()
        if buf:
            await run_in_threadpool(writer.write, bytes(buf))
        if writer.written == 0:
            raise InvalidRequest("upload body is empty: send the file's bytes as the request body")
        info = await run_in_threadpool(writer.commit)
    except BaseException:
        await run_in_threadpool(writer.abort)
        raise
    return {
        "bucket": info.bucket,
        "key": info.key,
        "size": info.size,
        "etag": info.etag,
        # pass as idempotency_key when submitting this upload explicitly, so the
        # upload trigger does not queue a second task for it
        "upload_key": upload_dedup_key(info),
    }


@router.get(
    "/{bucket}/{key:path}",
    summary="Download an object (Range supported)",
    dependencies=[require(Permission.FILES_READ)],
)
async def get_file(
    bucket: str, key: str, service: ConveyorService = Depends(get_service)
) -> Response:
    bucket, key = service.check_object(bucket, key)
    path = service.storage.local_path(bucket, key)
    if path is not None:
        if not path.is_file():
            raise ObjectNotFound(f"object not found: {bucket}/{key}")
        return FileResponse(path, filename=path.name)
    if not await run_in_threadpool(service.storage.exists, bucket, key):
        raise ObjectNotFound(f"object not found: {bucket}/{key}")
    url = await run_in_threadpool(service.storage.url, bucket, key)
    if url is None:
        raise ObjectNotFound(f"object {bucket}/{key} cannot be downloaded from this store")
    return RedirectResponse(url, status_code=307)
