"""The web console at /admin: Jinja2 pages, htmx, server-sent events.

It calls the same service as the REST API and never a backend; its browser
assets are vendored under ``static/vendor`` (see ``VERSIONS.md`` there), so
it works with no network beyond the Conveyor server itself.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from .live import ConsoleState
from .render import PREFIX, STATIC


def mount_console(app: FastAPI) -> None:
    """Serve the console and its assets from ``app`` (static first: the router ends in a 404).

    The kinds' own console pages come with their other routes (``Processor.routers``),
    mounted by the app before this; their words are their processors' ``labels``."""
    from .i18n import add_labels
    from .routes import router
    from .routes_auth import router as auth_router
    from .routes_cluster import router as cluster_router
    from .routes_webhooks import router as webhooks_router

    for _, processor in app.state.service.registry.items():
        add_labels(processor.labels)
    app.state.console = ConsoleState()
    app.mount(f"{PREFIX}/static", StaticFiles(directory=STATIC), name="console-static")
    app.include_router(auth_router)  # login, logout, audit: before the catch-all 404
    app.include_router(cluster_router)  # the Slurm cluster page
    app.include_router(webhooks_router)  # webhooks and their delivery logs
    app.include_router(router)


def _chain_exit_signals(closing: threading.Event) -> Callable[[], None]:
    """Set ``closing`` the moment the server is told to stop, before it waits on
    open connections: live streams end at once, so shutdown is not held up by a
    browser left open.  The previous handler (uvicorn's) still runs."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    installed: dict[int, tuple[Any, Any]] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(sig)

        def handler(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
            closing.set()
            if callable(previous):
                previous(signum, frame)
            elif previous == signal.SIG_DFL:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)

        signal.signal(sig, handler)
        installed[sig] = (previous, handler)

    def restore() -> None:
        for sig, (previous, handler) in installed.items():
            if signal.getsignal(sig) is handler:
                signal.signal(sig, previous)

    return restore


@contextmanager
def console_lifespan(app: FastAPI) -> Iterator[None]:
    state: ConsoleState | None = getattr(app.state, "console", None)
    if state is None:
        yield
        return
    state.closing.clear()
    restore = _chain_exit_signals(state.closing)
    try:
        yield
    finally:
        state.closing.set()
        restore()


__all__ = ["console_lifespan", "mount_console"]
