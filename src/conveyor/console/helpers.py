"""What every console page and action is made with (the pages in ``routes``,
``routes_auth`` and the kinds' own pages use them alike).

* :class:`ConsoleRoute`: a route class that answers errors with a readable page (or an
  htmx fragment), never JSON or a stack trace, and a missing session with the login page;
* forms (:func:`read_form`, :func:`first`, :func:`safe_next`), one-shot flash messages
  (a cookie across the redirect), full pages with the nav counters (:func:`page`), an
  action's answer (:func:`done`: a 303 or, for htmx, the fragments it changed).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import parse_qs

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from conveyor.errors import ConveyorError, InvalidRequest, Unauthenticated
from conveyor.service import QueueStatus
from conveyor.web.security import Principal, owner_filter

from . import live
from .i18n import Translator
from .render import PREFIX, context, is_htmx, query, render, render_string, request_lang

log = logging.getLogger(__name__)

FLASH_COOKIE = "conveyor_flash"
FORM_LIMIT = 256 * 1024


# -- errors: a readable page (or fragment), never a stack trace ----------------------
def error_flash(t: Translator, exc: ConveyorError | None) -> dict[str, Any]:
    if exc is None:
        return {
            "level": "error",
            "title": t("errors.internal"),
            "detail": t("errors.internal_help"),
        }
    return {
        "level": "error",
        "title": t.maybe(f"errors.{exc.code}", t("errors.error")),
        "detail": exc.message,
    }


async def error_response(request: Request, exc: ConveyorError | None) -> Response:
    status = exc.http_status if exc is not None else 500
    headers = exc.http_headers if exc is not None else {}
    t = Translator(request_lang(request))
    item = error_flash(t, exc)
    if is_htmx(request):
        html = render_string("fragments/flash.html", context(request, flash=[item]))
        return HTMLResponse(html, status_code=status, headers={"HX-Retarget": "#flash", **headers})
    try:
        qs: QueueStatus | None = await run_in_threadpool(
            request.app.state.service.queue_status, viewer_owner(request)
        )
    except Exception:  # the page must still say what went wrong
        qs = None
    response = render(
        request,
        "error.html",
        status=status,
        qs=qs,
        error_title=item["title"],
        error_detail=item["detail"],
        section="",
        sse_url=live.stream_url("nav"),
        flash=[],
    )
    response.headers.update(headers)
    return response


class ConsoleRoute(APIRoute):
    """Turns service errors and bad parameters into console pages, not JSON."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        original = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                return await original(request)
            except Unauthenticated:
                return login_redirect(request)
            except ConveyorError as exc:
                return await error_response(request, exc)
            except (RequestValidationError, ValidationError) as exc:
                errs = list(exc.errors())
                where = ".".join(str(p) for p in errs[0].get("loc", ()) if p != "query")
                msg = f"{where}: {errs[0].get('msg', 'invalid value')}" if errs else str(exc)
                return await error_response(request, InvalidRequest(msg))
            except StarletteHTTPException:
                raise
            except Exception:
                log.exception("console: %s %s failed", request.method, request.url.path)
                return await error_response(request, None)

        return handler


def login_redirect(request: Request) -> Response:
    """No session (or an ended one): to the login page, and back here afterwards."""
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    target = query(f"{PREFIX}/login", next=here if request.method == "GET" else None)
    if is_htmx(request):
        return Response(status_code=204, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)


# -- helpers ------------------------------------------------------------------------------
async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await run_in_threadpool(fn, *args, **kwargs)


async def read_form(request: Request) -> dict[str, list[str]]:
    """The body of a console form. (CSRF checking, when it comes, goes here.)"""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in ("", "application/x-www-form-urlencoded"):
        raise InvalidRequest("console forms are sent as application/x-www-form-urlencoded")
    body = await request.body()
    if len(body) > FORM_LIMIT:
        raise InvalidRequest("the form is too large")
    return parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)


def first(form: dict[str, list[str]], name: str, default: str = "") -> str:
    values = form.get(name)
    return values[0].strip() if values else default


def safe_next(url: str | None, default: str = PREFIX) -> str:
    """Only ever redirect back into the console."""
    if url and url.startswith(PREFIX) and not url.startswith("//") and "\\" not in url:
        return url
    return default


def pop_flash(request: Request) -> list[dict[str, Any]]:
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw:
        return []
    try:
        items = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode())
        return [i for i in items if isinstance(i, dict)][:5]
    except Exception:
        return []


def set_flash(resp: Response, items: list[dict[str, Any]]) -> None:
    raw = base64.urlsafe_b64encode(json.dumps(items, ensure_ascii=False).encode()).decode()
    resp.set_cookie(FLASH_COOKIE, raw.rstrip("="), max_age=60, path=PREFIX, samesite="lax")


def viewer_owner(request: Request) -> str | None:
    """The submitter whose own tasks alone the page's caller sees (None: everyone's)."""
    principal: Principal | None = getattr(request.state, "principal", None)
    return owner_filter(principal) if principal is not None else None


async def page(request: Request, name: str, **ctx: Any) -> Response:
    """A full page: flash from the previous redirect, nav counters for the header (a
    submitter's own)."""
    flash = pop_flash(request)
    if "qs" not in ctx:
        ctx["qs"] = await call(request.app.state.service.queue_status, viewer_owner(request))
    resp = render(request, name, flash=flash + ctx.pop("flash", []), **ctx)
    if flash:
        resp.delete_cookie(FLASH_COOKIE, path=PREFIX)
    return resp


def done(
    request: Request, items: list[dict[str, Any]], redirect: str, oob: list[str] | None = None
) -> Response:
    """An action's answer: message + changed fragments for htmx, else 303 with a flash."""
    if is_htmx(request):
        html = render_string("fragments/flash.html", context(request, flash=items))
        return HTMLResponse(html + "".join(oob or []))
    resp = RedirectResponse(redirect, status_code=303)
    set_flash(resp, items)
    return resp


def fragment(request: Request, name: str, **ctx: Any) -> str:
    return render_string(f"fragments/{name}.html", context(request, **ctx))


def oob(target: str, html: str) -> str:
    return f'<div hx-swap-oob="innerHTML:#{target}">{html}</div>'


def translator(request: Request) -> Translator:
    return Translator(request_lang(request))
