"""The web app: the REST API (one router per area, errors in one shape), the kinds'
own routes and the console at /admin, around one ``Runtime``.

It lives above both faces, so neither imports the other: ``api`` and ``console``
share only ``conveyor.web``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from conveyor import __version__
from conveyor.api import (
    routes_auth,
    routes_docs,
    routes_events,
    routes_files,
    routes_health,
    routes_kinds,
    routes_metrics,
    routes_tasks,
    routes_worker,
    routes_worker_files,
)
from conveyor.api.errors import RequestContextMiddleware, install_error_handlers
from conveyor.api.hardening import HardeningMiddleware
from conveyor.api.metrics import build_registry
from conveyor.console import console_lifespan, mount_console
from conveyor.server.runtime import Runtime
from conveyor.web.security import Permission, require

log = logging.getLogger(__name__)


def create_app(runtime: Runtime) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime.start()
        try:
            with console_lifespan(app):  # live console streams end as soon as a stop is asked
                yield
        finally:
            routes_worker.stop_work_signal(app.state)  # before the backend closes
            runtime.stop()

    app = FastAPI(
        title="Conveyor",
        version=__version__,
        description="Self-hosted job service for GPU work: transcoding, document parsing, "
        "containerised training.",
        lifespan=lifespan,
        # served by routes_docs instead, which follow the auth setting
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = runtime.service
    app.state.runtime = runtime
    install_error_handlers(app)
    app.add_middleware(
        HardeningMiddleware,
        max_bytes=runtime.service.settings.max_request_bytes,
        max_depth=runtime.service.settings.max_json_depth,
    )
    # added after the hardening middleware, so around it: a request id on every
    # response, and any exception (an outage: 503 + Retry-After; a bug: 500
    # 'internal') answered as JSON on a connection that stays open, before
    # Starlette's ServerErrorMiddleware (plain text, then re-raise) sees it
    app.add_middleware(RequestContextMiddleware)
    app.include_router(routes_health.router)
    app.include_router(routes_docs.router)  # /openapi.json, /docs, /redoc: need a token
    app.include_router(routes_tasks.router)
    app.include_router(routes_files.router)
    app.include_router(routes_events.router)  # webhooks, deliveries, the event stream
    app.include_router(routes_kinds.router)  # what each kind takes
    # the kinds' own faces (the container kind's training routes, its console page):
    # before the console's, whose /admin/tasks/{id} would take /admin/tasks/run
    for kind, processor in runtime.service.registry.items():
        try:
            routers = processor.routers()
        except Exception:  # a broken plug-in must not take the API down
            log.exception("could not mount the routes of kind %r", kind)
            continue
        for router in routers:
            app.include_router(router)
    app.include_router(routes_metrics.router)  # /metrics, read from the backend
    app.include_router(routes_auth.router)  # tokens, worker enrollment, audit
    app.include_router(routes_worker.router)  # remote workers: the worker protocol
    app.include_router(routes_worker_files.router)  # ... and their files
    app.state.rate_limiters = {}
    app.state.metrics_registry = build_registry(runtime.service)
    mount_console(app)  # the web console at /admin

    @app.get("/", include_in_schema=False, dependencies=[require(Permission.PUBLIC)])
    async def root() -> RedirectResponse:
        return RedirectResponse("/docs")

    return app
