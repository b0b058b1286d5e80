"""A request body streamed into the store: the public upload route and the worker
file route share it, so the size limit and the abort-on-failure live in one place."""

from __future__ import annotations

from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from conveyor.errors import InvalidRequest, PayloadTooLarge
from conveyor.service import ConveyorService
from conveyor.storage.base import ObjectInfo

CHUNK = 1 << 20


async def stream_into_store(
    request: Request,
    service: ConveyorService,
    bucket: str,
    key: str,
    content_type: str | None,
    *,
    allow_empty: bool,
) -> ObjectInfo:
    """Write the body in 1 MiB chunks under ``max_upload_bytes``; nothing is left
    behind when the body is too large, empty (unless allowed) or cut off."""
    limit = service.settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"upload of {declared} bytes exceeds the limit of {limit} bytes")
    writer = await run_in_threadpool(service.file_writer, bucket, key, content_type)
    try:
        buf = bytearray()
        async for chunk in request.stream():
            buf += chunk
            if writer.written + len(buf) > limit:
                raise PayloadTooLarge(f"upload exceeds the limit of {limit} bytes")
            if len(buf) >= CHUNK:
                await run_in_threadpool(writer.write, bytes(buf))
                buf.clear()
        if buf:
            await run_in_threadpool(writer.write, bytes(buf))
        if writer.written == 0 and not allow_empty:
            raise InvalidRequest("upload body is empty: send the file's bytes as the request body")
        info: ObjectInfo = await run_in_threadpool(writer.commit)
    except BaseException:
        await run_in_threadpool(writer.abort)
        raise
    return info
