"""Server-sent events: each open page polls the service about once a second and
receives only what changed, as named events carrying ready-made HTML that
htmx's SSE extension swaps into place.

Nothing here is in-process pub/sub: the stream reads the backend through the
service, so it sees work done by workers in other processes or on other hosts.
Streams end when the browser goes away and as soon as the server is asked to
stop (see ``ConsoleState.closing``), so ``conveyor up`` never waits on them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from markupsafe import escape

from conveyor.errors import ConveyorError
from conveyor.models import Task
from conveyor.service import ConveyorService

from . import views
from .i18n import LANGS, Translator
from .render import PREFIX, render_string

log = logging.getLogger(__name__)

TICK_S = 1.0
KEEPALIVE_S = 10.0
RETRY_MS = 2000
LOG_LINES_PER_TICK = 500
VIEWS = ("nav", "dashboard", "tasks", "task", "queue")


@dataclass
class ConsoleState:
    """Per-app console state: the shared read cache and the stop signal for streams."""

    cache: views.TTLCache = field(default_factory=views.TTLCache)
    closing: threading.Event = field(default_factory=threading.Event)


def sse_event(event: str, data: str, event_id: str | None = None) -> str:
    out = [f"event: {event}"]
    if event_id is not None:
        out.append(f"id: {event_id}")
    out.extend(f"data: {line}" for line in (data.splitlines() or [""]))
    return "\n".join(out) + "\n\n"


class Stream:
    """One browser page's view of the service; ``tick`` returns the changed events."""

    def __init__(
        self,
        service: ConveyorService,
        cache: views.TTLCache,
        *,
        lang: str,
        view: str,
        task_id: str | None = None,
        watch: list[str] | None = None,
        after: int = 0,
        attempt: int = 0,
        fingerprint: str = "",
        viewer: dict[str, Any] | None = None,
    ) -> None:
        self.service = service
        # who is watching (can, csrf): fragments show only the actions they may take
        self.viewer = viewer or {"can": lambda _p: True, "csrf": "", "auth_on": False}
        self.cache = cache
        self.view = view if view in VIEWS else "nav"
        self.task_id = task_id
        self.watch = (watch or [])[:200]
        self.after = after
        self.fingerprint = fingerprint
        self.prev_attempt = attempt  # of the last line the page shows: separators mark changes
        self.t = Translator(lang if lang in LANGS else "en")
        self.sent: dict[str, str] = {}
        self.first = True

    def _ctx(self, **ctx: Any) -> dict[str, Any]:
        return {
            "t": self.t,
            "lang": self.t.lang,
            "describe": self.service.describe,
            **self.viewer,
            **ctx,
        }

    def _fragment(self, name: str, **ctx: Any) -> str:
        return render_string(f"fragments/{name}.html", self._ctx(**ctx))

    def collect(self) -> dict[str, str]:
        """Every fragment this view shows, rendered now."""
        out: dict[str, str] = {}
        if self.view == "dashboard":
            data = views.dashboard(self.service, self.cache, self.viewer.get("owner"))
            out["stats"] = self._fragment("stats", **data)
            out["workers"] = self._fragment("workers", **data)
            out["recent"] = self._fragment("recent", **data)
            out["chart"] = str(escape(data["chart_json"]))
            out["chart-summary"] = self._fragment("chart_summary", **data)
            qs = data["qs"]
        elif self.view == "queue":
            data = views.queue(self.service, self.cache, self.viewer.get("owner"))
            out["queue-counts"] = self._fragment("queue_counts", **data)
            out["queue"] = self._fragment("queue_panel", **data)
            qs = data["qs"]
        else:
            qs = views.nav(self.service, self.cache, self.viewer.get("owner"))
        out["nav"] = self._fragment("nav_counts", qs=qs)
        if self.view == "tasks" and self.watch:
            for task in self.service.get_many(self.watch):
                out[f"row-{task.id}"] = self._row(task)
        if self.view == "task" and self.task_id:
            task, wait = self.service.explain(self.service.get(self.task_id))
            frags = {
                "task-head": self._fragment("task_head", task=task, wait=wait),
                "task-info": self._fragment("task_info", task=task),
                "task-outputs": self._fragment("task_outputs", task=task),
            }
            if self.first and views.fingerprint(task) == self.fingerprint:
                self.sent.update(frags)  # the page already shows exactly this
            out.update(frags)
        return out

    def _row(self, task: Task) -> str:
        state = self._fragment("row_state", task=task)
        took = self._fragment("row_time", task=task)
        # the duration cell rides along as an out-of-band swap
        return f'{state}<span hx-swap-oob="innerHTML:#row-time-{task.id}">{took}</span>'

    def _log_events(self) -> list[str]:
        if self.view != "task" or not self.task_id:
            return []
        lines = self.service.logs(self.task_id, after_seq=self.after, limit=LOG_LINES_PER_TICK)
        if not lines:
            return []
        html = render_string(
            "fragments/log_lines.html", self._ctx(lines=lines, prev_attempt=self.prev_attempt)
        )
        self.after = lines[-1].seq
        self.prev_attempt = lines[-1].attempt
        return [sse_event("log", html, str(self.after))]

    def tick(self) -> list[str]:
        events: list[str] = []
        for name, html in self.collect().items():
            if self.sent.get(name) != html:
                self.sent[name] = html
                events.append(sse_event(name, html))
        events.extend(self._log_events())
        self.first = False
        return events


async def run(
    stream: Stream, closing: threading.Event, *, once: bool = False
) -> AsyncIterator[str]:
    from fastapi.concurrency import run_in_threadpool

    yield f"retry: {RETRY_MS}\n\n"
    last_write = time.monotonic()
    while not closing.is_set():
        try:
            events = await run_in_threadpool(stream.tick)
        except ConveyorError as exc:  # e.g. the task vanished: tell the page once
            problem = sse_event("problem", str(escape(exc.message)))
            events = [] if stream.sent.get("problem") == problem else [problem]
            stream.sent["problem"] = problem
        except Exception:  # a hiccup reading the backend must not end the stream
            log.warning("console stream: reading the service failed", exc_info=True)
            events = []
        now = time.monotonic()
        if events:
            yield "".join(events)
            last_write = now
        elif now - last_write >= KEEPALIVE_S:
            yield ": keep-alive\n\n"
            last_write = now
        if once:
            return
        for _ in range(5):
            if closing.is_set():
                return
            await asyncio.sleep(TICK_S / 5)


def stream_url(view: str, **params: Any) -> str:
    from .render import query

    return query(f"{PREFIX}/events", view=view, **params)
