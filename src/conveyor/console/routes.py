"""The console's pages and actions under /admin: thin, every rule is the service's.

Pages are server-rendered; actions are plain HTML forms that POST here and
work without JavaScript (303 back to the page, with a one-shot flash
message).  With htmx, the same forms post in the background and get back the
message plus the fragments they changed, swapped out of band.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from pydantic import ValidationError

from conveyor.auth.roles import allows
from conveyor.errors import ConveyorError, Forbidden, InvalidRequest, NotFound
from conveyor.models import Task, TaskStatus, Trigger
from conveyor.service import (
    BulkResult,
    ConveyorService,
    QueueStatus,
    SubmitOptions,
    SubmitRequest,
)
from conveyor.web.deps import get_service
from conveyor.web.security import (
    Permission,
    Principal,
    audit,
    owner_filter,
    require,
    submitter_name,
)

from . import live, views
from .helpers import (
    ConsoleRoute,
    call,
    done,
    error_flash,
    first,
    fragment,
    oob,
    page,
    read_form,
    safe_next,
    set_flash,
    translator,
)
from .i18n import COOKIE, LANGS
from .render import PREFIX, context, is_htmx, query, request_lang, short_id
from .routes_webhooks import task_deliveries

PAGE_SIZES = (20, 50, 100, 200)
TRAIL_MAX = 100
VIEWER_KEYS = ("can", "csrf", "principal", "auth_on")


router = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)


# -- pages ------------------------------------------------------------------------------
@router.get("")
@router.get("/")
async def dashboard(
    request: Request,
    service: ConveyorService = Depends(get_service),
    principal: Principal = require(Permission.TASKS_READ),
) -> Response:
    data = await call(views.dashboard, service, None, owner_filter(principal))
    return await page(
        request, "dashboard.html", section="dashboard", sse_url=live.stream_url("dashboard"), **data
    )


@router.get("/tasks")
async def tasks(
    request: Request,
    status: str = "",
    date: str = "",
    q: str = "",
    kind: str = "",
    ext: str = "",
    limit: str = "50",
    cursor: str = "",
    trail: str = "",
    service: ConveyorService = Depends(get_service),
    principal: Principal = require(Permission.TASKS_READ),
) -> Response:
    lim = int(limit) if limit.isdigit() and int(limit) in PAGE_SIZES else 50
    result = await call(
        service.list,
        status=status or None,
        date=date or None,
        kind=kind or None,
        limit=lim,
        cursor=cursor or None,
        text=q or None,
        owner=owner_filter(principal),
        external_id=ext or None,
    )
    filters = {"status": status, "date": date, "q": q, "kind": kind, "ext": ext, "limit": lim}
    keep = {k: v for k, v in filters.items() if v and not (k == "limit" and v == 50)}
    crumbs = [c for c in trail.split(".") if c][-TRAIL_MAX:]
    next_url = prev_url = None
    if result.next_cursor:
        next_url = query(
            f"{PREFIX}/tasks",
            **keep,
            cursor=result.next_cursor,
            trail=".".join([*crumbs, cursor or "0"]),
        )
    if crumbs:
        back = crumbs[-1]
        prev_url = query(
            f"{PREFIX}/tasks",
            **keep,
            cursor=None if back == "0" else back,
            trail=".".join(crumbs[:-1]),
        )
    opts = await call(service.submit_options)
    watch = ",".join(t.id for t in result.items)
    return await page(
        request,
        "tasks.html",
        section="tasks",
        sse_url=live.stream_url("tasks", watch=watch),
        page=result,
        f=filters,
        kinds=opts.kinds,
        next_url=next_url,
        prev_url=prev_url,
        page_no=len(crumbs) + 1,
    )


def kind_form_values(
    opts: SubmitOptions, data: dict[str, list[str]] | None = None
) -> dict[str, str | list[str]]:
    """Every kind's fields on the add-task page: as posted (``data``), else their defaults."""
    values: dict[str, str | list[str]] = {}
    for kform in opts.forms.values():
        for f in kform.fields:
            if data is None or (not f.multiple and f.name not in data):
                values[f.name] = f.initial()
            elif f.multiple:
                values[f.name] = [v for v in data.get(f.name, []) if v]
            else:
                values[f.name] = first(data, f.name)
    return values


@router.get("/tasks/new", dependencies=[require(Permission.TASKS_SUBMIT)])
async def new_task(request: Request, service: ConveyorService = Depends(get_service)) -> Response:
    opts = await call(service.submit_options)
    form = {
        "kind": opts.default_kind
        if opts.default_kind in opts.forms
        else next(iter(opts.forms), ""),
        "source": "upload",
        "bucket": opts.input_bucket,
        "key": "",
        "priority": 0,
        "idempotency_key": "",
        "fields": kind_form_values(opts),
    }
    return await page(
        request, "new.html", section="new", sse_url=live.stream_url("nav"), opts=opts, form=form
    )


@router.post("/tasks/new")
async def submit_task(
    request: Request,
    service: ConveyorService = Depends(get_service),
    principal: Principal = require(Permission.TASKS_SUBMIT),
) -> Response:
    data = await read_form(request)
    t = translator(request)
    opts: SubmitOptions = await call(service.submit_options)
    kind = first(data, "kind") or opts.default_kind or ""
    form: dict[str, Any] = {
        "kind": kind,
        "source": first(data, "source", "existing"),
        "bucket": first(data, "bucket"),
        "key": first(data, "key"),
        "priority": first(data, "priority", "0") or "0",
        "idempotency_key": first(data, "idempotency_key"),
        "fields": kind_form_values(opts, data),
    }
    try:
        try:
            priority = int(form["priority"])
        except ValueError:
            raise InvalidRequest(t("new.bad_priority")) from None
        params = await call(service.params_from_form, kind, data)
        try:
            req = SubmitRequest(
                kind=kind,
                input_bucket=form["bucket"] or None,
                input_key=form["key"] or None,
                params=params,
                priority=priority,
                idempotency_key=form["idempotency_key"] or None,
            )
        except ValidationError:
            raise InvalidRequest(t("new.bad_priority")) from None
        res = await call(
            service.submit,
            req,
            trigger=Trigger.CONSOLE,
            submitted_by=submitter_name(request, principal),
            caller=principal,
        )
        if res.created:
            await audit(request, "submit", target=res.task.id)
    except ConveyorError as exc:
        return await page(
            request,
            "new.html",
            status=exc.http_status,
            section="new",
            sse_url=live.stream_url("nav"),
            opts=opts,
            form=form,
            flash=[error_flash(t, exc)],
        )
    title = t("flash.submitted") if res.created else t("flash.existing")
    resp = RedirectResponse(f"{PREFIX}/tasks/{res.task.id}", status_code=303)
    set_flash(resp, [{"level": "ok", "title": title}])
    return resp


@router.post("/tasks/bulk")
async def bulk(
    request: Request,
    service: ConveyorService = Depends(get_service),
    principal: Principal = require(Permission.TASKS_CANCEL),
) -> Response:
    data = await read_form(request)
    t = translator(request)
    back = safe_next(first(data, "next"), f"{PREFIX}/tasks")
    action = first(data, "action")
    ids = [i for i in data.get("ids", []) if i.strip()]
    if action not in ("retry", "cancel"):
        raise InvalidRequest(t("bulk.bad_action"))
    if not ids:
        return done(request, [{"level": "warn", "title": t("bulk.none_selected")}], back)
    if action == "retry" and not allows(principal.role, Permission.TASKS_RETRY):
        raise Forbidden(f"role {principal.role.value!r} may not retry tasks")
    fn = service.bulk_retry if action == "retry" else service.bulk_cancel
    result: BulkResult = await call(fn, ids, owner_filter(principal))
    for task in result.done:
        await audit(request, action, target=task.id)
    items: list[dict[str, Any]] = []
    if result.done:
        items.append({"level": "ok", "title": t.n(f"bulk.{action}_done", len(result.done))})
    if result.errors:
        items.append(
            {
                "level": "warn",
                "title": t.n(f"bulk.{action}_skipped", len(result.errors)),
                "list": [
                    f"{short_id(e.id)}: {t.maybe('errors.' + e.code, e.code)}. {e.message}"
                    for e in result.errors
                ],
            }
        )
    return done(request, items, back, [row_oob(request, task) for task in result.done])


def row_oob(request: Request, task: Task) -> str:
    return oob(f"row-state-{task.id}", fragment(request, "row_state", task=task)) + oob(
        f"row-time-{task.id}", fragment(request, "row_time", task=task)
    )


@router.get("/tasks/{task_id}")
async def task_page(
    request: Request,
    task_id: str,
    service: ConveyorService = Depends(get_service),
    principal: Principal = require(Permission.TASKS_READ),
) -> Response:
    task, wait = await call(
        service.explain, await call(service.get, task_id, owner_filter(principal))
    )
    logs = await call(views.task_log, service, task_id)
    deliveries = await call(task_deliveries, service, task_id, owner_filter(principal))
    # a parent (e.g. a long video split into chunks): its children and overall progress
    children = await call(service.children, task.id) if task.children else None
    lines = logs["lines"]
    sse = live.stream_url(
        "task",
        task=task.id,
        after=logs["last_seq"],
        attempt=lines[-1].attempt if lines else 0,
        fp=views.fingerprint(task),
    )
    return await page(
        request,
        "task.html",
        section="tasks",
        sse_url=sse,
        task=task,
        wait=wait,
        deliveries=deliveries,
        children=children,
        **logs,
    )


async def _task_action(
    request: Request,
    task_id: str,
    fn: Callable[[str, str | None], Task],
    key: str,
    principal: Principal,
    action: str,
) -> Response:
    await read_form(request)
    t = translator(request)
    task = await call(fn, task_id, owner_filter(principal))
    await audit(request, action, target=task_id)
    if task.status == TaskStatus.PROCESSING and task.cancel_requested:
        key = "flash.cancel_requested"
    head = oob("task-head", fragment(request, "task_head", task=task))
    return done(request, [{"level": "ok", "title": t(key)}], f"{PREFIX}/tasks/{task_id}", [head])


@router.post("/tasks/{task_id}/cancel")
async def cancel_task(
    request: Request,
    task_id: str,
    service: ConveyorService = Depends(get_service),
    principal: Principal = require(Permission.TASKS_CANCEL),
) -> Response:
    return await _task_action(
        request, task_id, service.cancel, "flash.cancelled", principal, "cancel"
    )


@router.post("/tasks/{task_id}/retry")
async def retry_task(
    request: Request,
    task_id: str,
    service: ConveyorService = Depends(get_service),
    principal: Principal = require(Permission.TASKS_RETRY),
) -> Response:
    return await _task_action(request, task_id, service.retry, "flash.retried", principal, "retry")


@router.get("/queue")
async def queue(
    request: Request,
    service: ConveyorService = Depends(get_service),
    principal: Principal = require(Permission.TASKS_READ),
) -> Response:
    data = await call(views.queue, service, None, owner_filter(principal))
    return await page(
        request,
        "queue.html",
        section="queue",
        sse_url=live.stream_url("queue"),
        cleared=None,
        **data,
    )


@router.get("/queue/clear", dependencies=[require(Permission.QUEUE_CLEAR)])
async def clear_confirm(
    request: Request, dismiss: str = "", service: ConveyorService = Depends(get_service)
) -> Response:
    if dismiss:
        if is_htmx(request):
            return HTMLResponse(fragment(request, "clear_button", cleared=None))
        return RedirectResponse(f"{PREFIX}/queue", status_code=303)
    qs: QueueStatus = await call(service.queue_status)
    n = qs.pending + qs.delayed + qs.waiting_for_children  # clear cancels held parents too
    if is_htmx(request):
        return HTMLResponse(fragment(request, "clear_confirm", n=n, delayed=qs.delayed))
    return await page(
        request,
        "clear.html",
        section="queue",
        sse_url=live.stream_url("nav"),
        qs=qs,
        n=n,
        delayed=qs.delayed,
    )


@router.post("/queue/clear", dependencies=[require(Permission.QUEUE_CLEAR)])
async def clear_queue(
    request: Request, service: ConveyorService = Depends(get_service)
) -> Response:
    await read_form(request)
    t = translator(request)
    n: int = await call(service.clear_queue)
    await audit(request, "clear", detail=f"{n} pending task(s) cancelled")
    if is_htmx(request):
        data = await call(views.queue, service)
        panel = oob("queue-panel", fragment(request, "queue_panel", **data))
        counts = oob("queue-counts", fragment(request, "queue_counts", **data))
        return HTMLResponse(fragment(request, "clear_button", cleared=n) + counts + panel)
    return done(request, [{"level": "ok", "title": t.n("queue.cleared", n)}], f"{PREFIX}/queue")


@router.get("/lang", dependencies=[require(Permission.PUBLIC)])
async def set_lang(
    lang: str = Query("", alias="set"), back: str = Query("", alias="next")
) -> Response:
    resp = RedirectResponse(safe_next(back), status_code=303)
    if lang in LANGS:
        resp.set_cookie(COOKIE, lang, max_age=365 * 86400, path="/", samesite="lax")
    return resp


@router.get("/events")
async def events(
    request: Request,
    view: str = "nav",
    task: str = "",
    watch: str = "",
    after: int = 0,
    attempt: int = 0,
    fp: str = "",
    once: bool = False,
    service: ConveyorService = Depends(get_service),
    principal: Principal = require(Permission.TASKS_READ),
) -> Response:
    owner = owner_filter(principal)
    if owner is not None:  # a submitter follows its own tasks only
        if task:
            await call(service.get, task, owner)
        if watch:
            mine = await call(service.get_many, [w for w in watch.split(",") if w])
            watch = ",".join(t.id for t in mine if t.submitted_by == owner)
    state: live.ConsoleState = request.app.state.console
    last_id = request.headers.get("last-event-id", "")
    if last_id.isdigit():  # a reconnecting browser says how far its log got
        after = max(after, int(last_id))
    stream = live.Stream(
        service,
        state.cache,
        lang=request_lang(request),
        view=view,
        task_id=task or None,
        watch=[w for w in watch.split(",") if w],
        after=after,
        attempt=attempt,
        fingerprint=fp,
        viewer={
            **{k: v for k, v in context(request).items() if k in VIEWER_KEYS},
            "owner": owner_filter(principal),
        },
    )
    return StreamingResponse(
        live.run(stream, state.closing, once=once),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/{rest:path}", dependencies=[require(Permission.PUBLIC)])
async def not_found(rest: str) -> Response:
    raise NotFound(f"no console page at {PREFIX}/{rest}")
