"""Console login (a token in, a session cookie out), logout and the audit page.

The session cookie is HttpOnly and SameSite=Strict, Secure when the request
came over HTTPS (directly or, with proxy headers trusted, through a proxy).
It names the token, so revoking the token ends every session made with it;
logout ends the one session on the server (``AuthService.end_session``).
"""

from __future__ import annotations

import hmac
import time
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from conveyor.auth.roles import Role
from conveyor.errors import ConveyorError, Forbidden, Unauthenticated
from conveyor.web.security import (
    SESSION_COOKIE,
    Permission,
    Principal,
    audit,
    auth_service,
    csrf_sent,
    rate_limit,
    require,
)

from . import live
from .helpers import ConsoleRoute, call, first, page, read_form, safe_next, translator
from .render import PREFIX, query, render

router = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)


def _same_origin(request: Request) -> bool:
    """A login form posted from another site is refused (login CSRF)."""
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host", "")


@router.get("/login", dependencies=[require(Permission.PUBLIC)])
async def login_page(request: Request, next: str = "") -> Response:
    if not auth_service(request).enabled:
        return RedirectResponse(safe_next(next), status_code=303)
    return render(request, "login.html", next=safe_next(next), flash=[])


@router.post("/login", dependencies=[require(Permission.PUBLIC), rate_limit("login")])
async def login(request: Request) -> Response:
    auth = auth_service(request)
    data = await read_form(request)
    back = safe_next(first(data, "next"))
    if not auth.enabled:
        return RedirectResponse(back, status_code=303)
    t = translator(request)
    try:
        if not _same_origin(request):
            raise Forbidden("login from another site refused")
        principal = await call(auth.authenticate, first(data, "token"))
        if principal.role is Role.WORKER:
            raise Forbidden("a worker credential cannot log in to the console")
    except ConveyorError as exc:
        await audit(
            request,
            "login",
            ok=False,
            detail=exc.message,
            principal=Principal("-", "unknown", Role.VIEWER),
        )
        item = {"level": "error", "title": t("auth.failed"), "detail": exc.message}
        return render(request, "login.html", status=401, next=back, flash=[item])
    cookie, session = await call(auth.new_session, principal)
    await audit(request, "login", principal=principal)
    resp = RedirectResponse(back, status_code=303)
    resp.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=max(1, int(session.expires_at - time.time())),
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return resp


@router.post("/logout", dependencies=[require(Permission.PUBLIC)])
async def logout(request: Request) -> Response:
    """End the session on the server, so its cookie is refused from now on (a copy of it
    included).  Like every cookie-borne change it needs the session's CSRF token, and a
    form posted from another origin is refused: another site cannot log you out."""
    auth = auth_service(request)
    cookie = request.cookies.get(SESSION_COOKIE)
    if auth.enabled and cookie:
        if not _same_origin(request):
            raise Forbidden("logout from another site refused")
        try:
            session = await call(auth.read_session, cookie)
        except Unauthenticated:
            session = None  # already ended or expired: nothing to end, only the cookie
        if session is not None:
            sent = await csrf_sent(request)
            if not sent or not hmac.compare_digest(sent, session.csrf):
                raise Forbidden("missing or wrong CSRF token: reload the page and try again")
            await call(auth.end_session, session)
            principal = getattr(request.state, "principal", None)
            if principal is not None and principal.token_id == session.token_id:
                await audit(request, "logout", principal=principal)
    resp = RedirectResponse(f"{PREFIX}/login", status_code=303)
    resp.delete_cookie(SESSION_COOKIE, path="/")
    return resp


@router.get("/audit")
async def audit_page(
    request: Request,
    cursor: str = "",
    _: Principal = require(Permission.AUDIT_READ),
) -> Response:
    result = await call(auth_service(request).list_audit, 100, cursor or None)
    next_url = query(f"{PREFIX}/audit", cursor=result.next_cursor) if result.next_cursor else None
    return await page(
        request,
        "audit.html",
        section="audit",
        sse_url=live.stream_url("nav"),
        events=result.events,
        next_url=next_url,
    )
