"""Who is calling, and may they: the one dependency every route declares.

``require(Permission.X)`` resolves the caller from ``Authorization: Bearer``
(API clients, workers) or from the console's session cookie, checks the
role's permission and returns the ``Principal``.  A request that rides on the
session cookie and changes something must also carry the session's CSRF token
(header ``X-CSRF-Token``, sent by htmx from ``hx-headers`` on ``<body>``, or
the form field ``csrf_token``).  With auth off (the embedded default) every
caller is the open-mode admin, so nothing changes for a loopback-only setup.
"""

from __future__ import annotations

import hmac
import time
from collections import defaultdict, deque
from typing import Any
from urllib.parse import parse_qs

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool

from conveyor.auth.roles import Permission, Role, allows, sees_only_own_tasks
from conveyor.auth.service import OPEN_PRINCIPAL, AuthService, Principal
from conveyor.errors import Forbidden, RateLimited, Unauthenticated

SESSION_COOKIE = "conveyor_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PERMISSION_ATTR = "conveyor_permission"
# a caller of a public route with no (or no valid) credential while auth is on
# bandit B106: "-" is a placeholder id, not a password
ANONYMOUS = Principal(token_id="-", name="public", role=Role.VIEWER)  # nosec B106


def auth_service(request: Request) -> AuthService:
    svc: AuthService = request.app.state.service.auth
    return svc


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


async def csrf_sent(request: Request) -> str:
    """The CSRF token a cookie-borne request carries (header, else form field)."""
    sent = request.headers.get(CSRF_HEADER, "")
    if sent:
        return sent
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/x-www-form-urlencoded":
        body = await request.body()  # cached on the request: the route reads it again
        values = parse_qs(body.decode("utf-8", "replace")).get(CSRF_FIELD, [""])
        return values[0]
    return ""


async def resolve_principal(request: Request) -> Principal:
    cached: Principal | None = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    auth = auth_service(request)
    if not auth.enabled:
        principal = OPEN_PRINCIPAL
    else:
        header = request.headers.get("authorization", "")
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("send the token as 'Authorization: Bearer <token>'")
            principal = await run_in_threadpool(auth.authenticate, token)
        else:
            cookie = request.cookies.get(SESSION_COOKIE)
            if not cookie:
                raise Unauthenticated(
                    "authentication required: send 'Authorization: Bearer <token>' "
                    "or log in to the console"
                )
            session = await run_in_threadpool(auth.read_session, cookie)
            if request.method not in SAFE_METHODS:
                sent = await csrf_sent(request)
                if not sent or not hmac.compare_digest(sent, session.csrf):
                    raise Forbidden("missing or wrong CSRF token: reload the page and try again")
            principal = await run_in_threadpool(auth.principal_of, session.token_id)
            request.state.csrf = session.csrf
    request.state.principal = principal
    return principal


def require(permission: Permission) -> Any:
    """A dependency that admits callers whose role holds ``permission``."""

    async def dependency(request: Request) -> Principal:
        if permission is Permission.PUBLIC:
            auth = auth_service(request)
            if not auth.enabled:
                return OPEN_PRINCIPAL
            try:
                return await resolve_principal(request)
            except (Unauthenticated, Forbidden):
                return ANONYMOUS
        principal = await resolve_principal(request)
        if principal is OPEN_PRINCIPAL:  # auth off: every caller may do everything
            return principal
        if not allows(principal.role, permission):
            raise Forbidden(
                f"role {principal.role.value!r} may not do this (needs {permission.value})"
            )
        return principal

    setattr(dependency, PERMISSION_ATTR, permission)
    dependency.__name__ = f"require_{permission.name.lower()}"
    return Depends(dependency)


def iter_routes(routes: Any) -> Any:
    """Every route of an app, through the routers it includes (FastAPI keeps included
    routers as nodes of their own: ``original_router``)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from iter_routes(inner.routes)
        else:
            yield route


def route_permission(route: Any) -> Permission | None:
    """The permission a route declared through ``require``, or None."""
    dependant = getattr(route, "dependant", None)
    stack = list(dependant.dependencies) if dependant else []
    while stack:
        dep = stack.pop()
        perm = getattr(dep.call, PERMISSION_ATTR, None)
        if perm is not None:
            return perm  # type: ignore[no-any-return]
        stack.extend(dep.dependencies)
    return None


class RateLimiter:
    """At most ``limit`` calls per ``window_s`` per key (client IP), in this process.

    For the auth endpoints only (login, enroll): enough to make guessing slow;
    a cluster behind a load balancer multiplies it by its API processes.
    """

    def __init__(self, limit: int, window_s: float = 60.0) -> None:
        self.limit = limit
        self.window_s = window_s
        self._hits: dict[str, deque[float]] = defaultdict(deque)

    def check(self, key: str) -> None:
        now = time.monotonic()
        hits = self._hits[key]
        while hits and hits[0] <= now - self.window_s:
            hits.popleft()
        if len(hits) >= self.limit:
            retry = int(hits[0] + self.window_s - now) + 1
            raise RateLimited(
                f"too many attempts from this address: try again in {retry} s", retry_after=retry
            )
        hits.append(now)
        if len(self._hits) > 10_000:  # forget idle addresses
            for k in [k for k, v in self._hits.items() if not v]:
                del self._hits[k]


def rate_limit(bucket: str) -> Any:
    async def dependency(request: Request) -> None:
        limiters: dict[str, RateLimiter] = request.app.state.rate_limiters
        if bucket not in limiters:
            limiters[bucket] = RateLimiter(request.app.state.service.settings.auth_rate_limit)
        limiters[bucket].check(client_ip(request) or "-")

    return Depends(dependency)


def owner_filter(principal: Principal) -> str | None:
    """The submitter whose tasks (and files) alone this caller may see and act on
    (None: all)."""
    return principal.name if sees_only_own_tasks(principal.role) else None


def is_anonymous(principal: Principal) -> bool:
    """A public route's caller that showed no valid credential (auth on)."""
    return principal is ANONYMOUS


def submitter_name(request: Request, principal: Principal) -> str | None:
    """What a new task records as ``submitted_by``: the token's name when auth is on."""
    return principal.name if auth_service(request).enabled else None


async def audit(
    request: Request,
    action: str,
    *,
    target: str | None = None,
    ok: bool = True,
    detail: str | None = None,
    principal: Principal | None = None,
) -> None:
    who = principal or getattr(request.state, "principal", None)
    await run_in_threadpool(
        auth_service(request).audit,
        who,
        action,
        target=target,
        ip=client_ip(request),
        ok=ok,
        detail=detail,
    )


__all__ = [
    "ANONYMOUS",
    "CSRF_FIELD",
    "CSRF_HEADER",
    "SESSION_COOKIE",
    "Permission",
    "Principal",
    "RateLimiter",
    "audit",
    "auth_service",
    "client_ip",
    "csrf_sent",
    "is_anonymous",
    "iter_routes",
    "owner_filter",
    "rate_limit",
    "require",
    "resolve_principal",
    "route_permission",
    "submitter_name",
]
