"""Request limits and response headers, as one ASGI middleware in front of every route.

* bodies larger than ``max_request_bytes`` are refused with 413 before a
  route reads them (file uploads, which stream to storage under their own
  limit, are exempt);
* JSON bodies nested deeper than ``max_json_depth`` are refused with 400, so
  a crafted body cannot exhaust the parser's recursion;
* every response carries nosniff, a Referrer-Policy and frame denial; console
  pages also a Content-Security-Policy without inline script.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CONSOLE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob: https: http:; media-src 'self' blob: https: http:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'none'"
)
COMMON_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]
STREAMED_PREFIXES = (
    "/api/files/",
    "/api/worker/v1/files/",
)  # raw uploads: limited by max_upload_bytes instead
# The worker protocol's JSON bodies carry a task's whole output list (a parsed
# document: one entry per extracted figure) or a log batch: a larger cap, for
# callers that already hold a worker credential.
WORKER_PROTOCOL_PREFIX = "/api/worker/v1/"
WORKER_PROTOCOL_FACTOR = 16


def json_depth(raw: bytes) -> int:
    """How deeply ``raw`` nests arrays and objects, counted without parsing it."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


async def _error(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *COMMON_HEADERS,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class HardeningMiddleware:
    def __init__(self, app: ASGIApp, *, max_bytes: int, max_depth: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        console = path == "/admin" or path.startswith("/admin/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.extend(COMMON_HEADERS)
                if console:
                    headers.append((b"content-security-policy", CONSOLE_CSP.encode()))
                message["headers"] = headers
            await send(message)

        if path.startswith(STREAMED_PREFIXES) or scope.get("method") in ("GET", "HEAD"):
            await self.app(scope, receive, send_with_headers)
            return
        limit = self.max_bytes
        if path.startswith(WORKER_PROTOCOL_PREFIX):
            limit *= WORKER_PROTOCOL_FACTOR
        headers = dict(scope.get("headers", []))
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await _error(
                send,
                413,
                "payload_too_large",
                f"request body of {int(declared)} bytes exceeds the limit of {limit}",
            )
            return
        # read the body here (bounded), check it, then hand it to the app as one chunk
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _error(
                    send,
                    413,
                    "payload_too_large",
                    f"request body exceeds the limit of {limit} bytes",
                )
                return
            chunks.append(chunk)
            more = bool(message.get("more_body", False))
        body = b"".join(chunks)
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if ctype.endswith(b"json") and json_depth(body) > self.max_depth:
            await _error(
                send,
                400,
                "invalid_request",
                f"JSON body nests deeper than {self.max_depth} levels",
            )
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send_with_headers)
