"""A small HTTP client for the CLI: the CLI talks to a server, never to a database."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from conveyor.remote.errors import read_error


class ClientError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class ConveyorClient:
    def __init__(self, url: str, timeout: float = 30.0, token: str | None = None) -> None:
        """``token``: a bearer token (default ``$CONVEYOR_TOKEN``) for a server with auth on."""
        self.url = url.rstrip("/")
        token = token if token is not None else os.environ.get("CONVEYOR_TOKEN", "")
        headers = {"Authorization": f"Bearer {token.strip()}"} if token.strip() else {}
        self.http = httpx.Client(base_url=self.url, timeout=timeout, headers=headers)

    def _check(self, r: httpx.Response) -> Any:
        if r.status_code >= 400:
            e = read_error(r)
            raise ClientError(e.status, e.code, e.message)
        return r.json()

    def request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            return self._check(self.http.request(method, path, **kw))
        except httpx.TransportError as exc:
            raise ClientError(
                0, "unreachable", f"cannot reach Conveyor at {self.url}: {exc}"
            ) from None

    def upload(self, path: Path, bucket: str, key: str) -> Any:
        size = path.stat().st_size

        def chunks() -> Any:
            with open(path, "rb") as fh:
                while block := fh.read(1 << 20):
                    yield block

        return self.request(
            "PUT",
            f"/api/files/{quote(bucket)}/{quote(key)}",
            content=chunks(),
            headers={"content-length": str(size), "content-type": "application/octet-stream"},
            timeout=None,
        )

    def add(self, body: dict[str, Any]) -> Any:
        return self.request("POST", "/api/queue/add", json=body)

    def task(self, task_id: str) -> Any:
        return self.request("GET", f"/api/tasks/{quote(task_id)}")

    def follow_logs(self, task_id: str, attempt: int | None = None) -> Iterator[tuple[str, Any]]:
        """(event, data) from the log's server-sent event stream until the task ends."""
        params: dict[str, Any] = {"follow": "true"}
        if attempt:
            params["attempt"] = attempt
        try:
            with self.http.stream(
                "GET", f"/api/tasks/{quote(task_id)}/logs", params=params, timeout=None
            ) as r:
                if r.status_code >= 400:
                    r.read()
                    self._check(r)
                event, data = "message", list[str]()
                for line in r.iter_lines():
                    if line == "":
                        if data:
                            yield event, json.loads("\n".join(data))
                        event, data = "message", []
                    elif line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].strip())
        except httpx.TransportError as exc:
            raise ClientError(
                0, "unreachable", f"cannot reach Conveyor at {self.url}: {exc}"
            ) from None
