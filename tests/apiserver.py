"""A real Conveyor API (uvicorn on 127.0.0.1, a free port) inside the test process.

Used where a test needs the API's engine in hand as well as the API over
real HTTP: the contract suites run the remote worker engines against it,
with the operator half of the contract on the very engine object the API
serves (so its submit wakes the API's long-polling workers as a second
process's submit through the API would).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from conveyor.backends.sqlite import SQLiteBackend
from conveyor.config import Settings
from conveyor.processors import ProcessorRegistry
from conveyor.server.app import create_app
from conveyor.server.runtime import Runtime
from conveyor.service import ConveyorService
from conveyor.storage.local import LocalBlobStore
from tests.conftest import free_port


@dataclass
class ApiServer:
    url: str
    app: Any
    service: ConveyorService
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def serve_app(
    app: Any, *, ssl: dict[str, str] | None = None, port: int | None = None
) -> tuple[str, uvicorn.Server, threading.Thread]:
    port = port or free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        **({"ssl_certfile": ssl["cert"], "ssl_keyfile": ssl["key"]} if ssl else {}),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"api-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test API did not start")
        time.sleep(0.01)
    scheme = "https" if ssl else "http"
    return f"{scheme}://127.0.0.1:{port}", server, thread


def start_api(
    workdir: Path,
    *,
    backoff_base: float = 5.0,
    configure: Callable[[FastAPI], None] | None = None,
    port: int | None = None,
    **settings: Any,
) -> ApiServer:
    """SQLite + a local bucket folder under ``workdir``, no reaper (tests reap by hand).

    ``configure`` may add routes or dependency overrides before the server starts.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = Settings(data_dir=workdir, **settings)
    backend = SQLiteBackend(workdir / "conveyor.db", backoff_base=backoff_base)
    storage = LocalBlobStore(workdir / "buckets")
    service = ConveyorService(cfg, backend, storage, ProcessorRegistry.load(cfg))
    app = create_app(Runtime(service=service))
    if configure is not None:
        configure(app)
    url, server, thread = serve_app(app, port=port)
    return ApiServer(url=url, app=app, service=service, server=server, thread=thread)
