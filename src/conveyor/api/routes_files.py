"""Upload and download for stores the client cannot reach directly.

Uploads stream to the store's staging area and become visible only when
complete, so the upload trigger never sees half a file.  A submitter (or
developer) reads and writes only its own files (``ConveyorService.check_object``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, RedirectResponse, Response

from conveyor.errors import ObjectNotFound
from conveyor.service import ConveyorService, upload_dedup_key
from conveyor.web.deps import get_service
from conveyor.web.security import Permission, Principal, owner_filter, require

from .uploads import stream_into_store

router = APIRouter(prefix="/api/files", tags=["files"])

# a playlist larger than this (a day of 1 s segments is about 3 MB) is redirected too
MAX_SERVED_PLAYLIST = 32 * 1024 * 1024


def _read_all(service: ConveyorService, bucket: str, key: str) -> bytes:
    with service.open_file(bucket, key) as f:
        return f.read(MAX_SERVED_PLAYLIST + 1)


@router.put("/{bucket}/{key:path}", status_code=201, summary="Upload an object (raw body)")
async def put_file(
    bucket: str,
    key: str,
    request: Request,
    service: ConveyorService = Depends(get_service),
    principal: Principal = require(Permission.FILES_WRITE),
) -> dict[str, Any]:
    """A submitter (or developer) writes only under ``<its token's name>/`` in the input
    and output buckets."""
    bucket, key = await run_in_threadpool(
        lambda: service.check_object(bucket, key, owner=owner_filter(principal), write=True)
    )
    info = await stream_into_store(
        request,
        service,
        bucket,
        key,
        request.headers.get("content-type"),
        allow_empty=False,
    )
    return {
        "bucket": info.bucket,
        "key": info.key,
        "size": info.size,
        "etag": info.etag,
        # pass as idempotency_key when submitting this upload explicitly, so the
        # upload trigger does not queue a second task for it
        "upload_key": upload_dedup_key(info),
    }


@router.get("/{bucket}/{key:path}", summary="Download an object (Range supported)")
async def get_file(
    bucket: str,
    key: str,
    service: ConveyorService = Depends(get_service),
    principal: Principal = require(Permission.FILES_READ),
) -> Response:
    """A submitter (or developer) reads its own files and its own tasks' output folders.

    A local store's file is served here (``Range`` answered with 206); on S3 the answer
    is a redirect to a presigned URL (which answers ``Range`` itself), except for HLS
    playlists and DASH manifests, served here: they name their segments relative to
    their own URL, which must stay this path (a presigned URL's folder is not readable).
    The files of a stream go out with the types their outputs were recorded with."""
    bucket, key = await run_in_threadpool(
        lambda: service.check_object(bucket, key, owner=owner_filter(principal))
    )
    media_type = service.file_media_type(key)
    path = service.file_path(bucket, key)
    if path is not None:
        if not path.is_file():
            raise ObjectNotFound(f"object not found: {bucket}/{key}")
        return FileResponse(path, filename=path.name, media_type=media_type)
    if service.file_is_playlist(key):
        info = await run_in_threadpool(service.file_info, bucket, key)
        if info is None:
            raise ObjectNotFound(f"object not found: {bucket}/{key}")
        if info.size <= MAX_SERVED_PLAYLIST:
            body = await run_in_threadpool(_read_all, service, bucket, key)
            return Response(body, media_type=media_type or info.content_type)
    elif not await run_in_threadpool(service.file_exists, bucket, key):
        raise ObjectNotFound(f"object not found: {bucket}/{key}")
    url = await run_in_threadpool(service.file_url, bucket, key)
    if url is None:
        raise ObjectNotFound(f"object {bucket}/{key} cannot be downloaded from this store")
    return RedirectResponse(url, status_code=307)
