"""Templates: one Jinja2 environment, rendered in the request's language."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse

from conveyor import __version__
from conveyor.auth.roles import Permission, allows, roles_with, sees_only_own_tasks
from conveyor.models import Task, TaskStatus
from conveyor.processors.base import FormField

from .i18n import COOKIE, LANGS, Translator, negotiate

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
PREFIX = "/admin"

VIDEO_TYPES = ("video/mp4", "video/webm")


def iso(dt: datetime | None) -> str:
    if dt is None:
        return ""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def utc_text(dt: datetime | None) -> str:
    """What a ``<time>`` shows before the browser formats it in its own zone."""
    if dt is None:
        return "–"
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def short_id(task_id: str) -> str:
    return task_id[-10:]


def file_url(bucket: str, key: str) -> str:
    """The API's download path: a file here, a presigned redirect on S3."""
    return f"/api/files/{quote(bucket)}/{quote(key)}"


def pct(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or value == 0 else f"{value:.1f}"


def seconds_between(a: datetime | None, b: datetime | None) -> float | None:
    if a is None or b is None:
        return None
    return (b - a).total_seconds()


def preview(task: Task) -> dict[str, Any]:
    """The output to play in the page (H.264 plays everywhere) and the thumbnail."""
    video = None
    for o in task.outputs:
        if o.content_type in VIDEO_TYPES and o.meta.get("codec") in ("h264", "vp9", "av1"):
            video = o
            if o.meta.get("audio"):
                break
    image = next((o for o in task.outputs if (o.content_type or "").startswith("image/")), None)
    return {"video": video, "image": image}


# a stream's files besides its entry points (master.m3u8, manifest.mpd): listed by count
STREAM_PARTS = ("playlist", "init", "segment")


def streams(task: Task) -> dict[str, Any]:
    """What a completed task offers to stream: its HLS entry points (the page plays the
    first, and offers the others), and per streaming group the number of files and their
    size (the outputs table shows a group by its entry points, not its segments)."""
    players = []
    if task.status == TaskStatus.COMPLETED:
        players = [
            o
            for o in task.outputs
            if o.meta.get("role") == "master" and o.name.endswith("master.m3u8")
        ]
    groups: dict[str, dict[str, int]] = {}
    for o in task.outputs:
        group = o.meta.get("group")
        if group and o.meta.get("role"):
            acc = groups.setdefault(str(group), {"files": 0, "size": 0})
            acc["files"] += 1
            acc["size"] += o.size
    return {"players": players, "groups": groups}


def static_url(path: str) -> str:
    return f"{PREFIX}/static/{path}?v={__version__}"


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


def form_rows(fields: tuple[FormField, ...]) -> list[list[FormField]]:
    """A kind's fields in rows: consecutive ``inline`` fields share one."""
    rows: list[list[FormField]] = []
    for f in fields:
        if f.inline and rows and rows[-1][-1].inline:
            rows[-1].append(f)
        else:
            rows.append([f])
    return rows


def query(base: str, **params: Any) -> str:
    clean = {k: v for k, v in params.items() if v not in (None, "", [])}
    return f"{base}?{urlencode(clean, doseq=True)}" if clean else base


_loaders: list[FileSystemLoader] = [FileSystemLoader(str(TEMPLATES))]
env = Environment(
    loader=ChoiceLoader(_loaders),
    autoescape=select_autoescape(["html"], default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
env.globals.update(
    static=static_url,
    file_url=file_url,
    short_id=short_id,
    seconds_between=seconds_between,
    preview=preview,
    streams=streams,
    STREAM_PARTS=STREAM_PARTS,
    query=query,
    iso=iso,
    utc_text=utc_text,
    pct=pct,
    form_rows=form_rows,
    LANGS=LANGS,
    PREFIX=PREFIX,
    STATUSES=[s.value for s in TaskStatus],
    version=__version__,
)
env.filters["tojson_pretty"] = to_json


def add_templates(folder: Path) -> None:
    """Templates of a kind's own console pages (its processor's ``routers`` render them
    with the console's layout); the console's own templates win a name both have."""
    loader = FileSystemLoader(str(folder))
    if all(loader.searchpath != known.searchpath for known in _loaders):
        _loaders.append(loader)


def request_lang(request: Request) -> str:
    return negotiate(request.cookies.get(COOKIE), request.headers.get("accept-language"))


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def context(request: Request, **ctx: Any) -> dict[str, Any]:
    lang = request_lang(request)
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    principal = getattr(request.state, "principal", None)
    auth_on = bool(request.app.state.service.auth.enabled)

    def can(permission: str) -> bool:
        """Show an action only to roles the server would let take it."""
        if not auth_on:
            return True
        return principal is not None and allows(principal.role, Permission(permission))

    t = Translator(lang)
    own = principal.name if auth_on and principal and sees_only_own_tasks(principal.role) else ""
    base: dict[str, Any] = {
        # where a submitter's (or developer's) files live; uploads go there
        "files_prefix": f"{own}/" if own else "",
        # who may run code (container jobs): said on the form that runs it
        "run_code_roles": t("list.sep").join(
            t(f"role.{r.value}") for r in roles_with(Permission.TASKS_RUN_CODE)
        ),
        # what the task's kind shows of it beside its params (its processor's tags)
        "describe": request.app.state.service.describe,
        "principal": principal if auth_on else None,
        "auth_on": auth_on,
        "can": can,
        "csrf": getattr(request.state, "csrf", "") if auth_on else "",
        "t": t,
        "lang": lang,
        "here": here,
        "request": request,
        "htmx": is_htmx(request),
    }
    base.update(ctx)
    return base


def render_string(name: str, ctx: dict[str, Any]) -> str:
    return env.get_template(name).render(ctx)


def render_block(name: str, block: str, ctx: dict[str, Any]) -> str:
    """One block of a template (a fragment the page also contains), for htmx and SSE."""
    template = env.get_template(name)
    return "".join(template.blocks[block](template.new_context(ctx)))


def render(
    request: Request,
    name: str,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
    **ctx: Any,
) -> HTMLResponse:
    html = render_string(name, context(request, **ctx))
    resp = HTMLResponse(html, status_code=status, headers=headers)
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Vary"] = "Accept-Language, Cookie, HX-Request"
    return resp


def markup(html: str) -> Markup:
    # bandit B704: only for HTML our own autoescaping templates rendered
    return Markup(html)  # nosec B704
