"""Every route declares a permission, and every role gets exactly what it declares."""

from __future__ import annotations

import re
from typing import Any

from fastapi.routing import APIRoute
from starlette.routing import Mount, Route

from conveyor.auth.roles import Permission, Role, allows, sees_only_own_tasks
from conveyor.web.security import iter_routes, route_permission

from .conftest import SecuredApi

# routes FastAPI itself adds (schema and its viewers) and the console's static files
NOT_API_ROUTES = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/admin/static"}
# public routes whose answer depends on the body, each with its own tests
OWN_TESTS = {("POST", "/admin/login"), ("POST", "/api/workers/enroll")}


def _api_routes(secured: SecuredApi) -> list[APIRoute]:
    routes = iter_routes(secured.client.app.routes)  # type: ignore[attr-defined]
    return [r for r in routes if isinstance(r, APIRoute)]


def test_every_route_declares_a_permission(secured: SecuredApi) -> None:
    missing: list[str] = []
    seen = 0
    for route in iter_routes(secured.client.app.routes):  # type: ignore[attr-defined]
        seen += 1
        if isinstance(route, APIRoute):
            if route_permission(route) is None:
                missing.append(f"{sorted(route.methods)} {route.path}")
        elif isinstance(route, Route | Mount):
            assert route.path in NOT_API_ROUTES, f"unexpected non-API route {route.path}"
    assert not missing, f"routes without require(Permission.X): {missing}"
    assert seen > 40, seen
    # the OpenAPI list is covered too: every documented operation is one of those routes
    schema = secured.client.get("/openapi.json", headers=secured.headers(Role.VIEWER)).json()
    documented = {(m.upper(), p) for p, ops in schema["paths"].items() for m in ops}
    declared = {
        (m, r.path.replace(":path}", "}"))
        for r in _api_routes(secured)
        for m in r.methods
        if route_permission(r)
    }
    assert documented <= declared, documented - declared


def own_key(role: Role | None, key: str) -> str:
    """A submitter's (or developer's) files live under '<token name>/'."""
    return f"{role.value}-user/{key}" if role is not None and sees_only_own_tasks(role) else key


def task_body(secured: SecuredApi, role: Role) -> dict[str, Any]:
    """A transcode task on a file the role uploaded into its own folder (running code is
    not every role's right: container tasks need tasks:run_code)."""
    key = own_key(role, "clip.mp4")
    r = secured.client.put(
        f"/api/files/input/{key}", content=b"\0" * 16, headers=secured.headers(role)
    )
    assert r.status_code == 201, r.text
    return {"input_bucket": "input", "input_key": key, "transcode_types": ["thumbnail"]}


def _fill(path: str, ids: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)(?::path)?\}", lambda m: ids.get(m.group(1), "x"), path)


def _call(secured: SecuredApi, method: str, path: str, headers: dict[str, str]) -> Any:
    kwargs: dict[str, Any] = {"headers": dict(headers), "follow_redirects": False}
    if path.startswith("/admin/events"):
        path += "?once=1"
    if path == "/api/events":  # the stream lasts until the client leaves: what is there
        path += "?follow=false"
    if method in ("POST", "PUT", "DELETE", "PATCH"):
        if path.startswith("/api/files/"):
            kwargs["content"] = b"x"
        elif path.startswith("/admin"):
            kwargs["data"] = {"next": "/admin"}
        elif method != "DELETE":
            kwargs["json"] = {}
    return secured.client.request(method, path, **kwargs)


def test_permission_matrix(secured: SecuredApi) -> None:
    admin = secured.headers(Role.ADMIN)
    c = secured.client
    assert c.put("/api/files/input/m.mp4", content=b"\0" * 10, headers=admin).status_code == 201
    body = {"kind": "container", "params": {"image": "busybox", "command": ["true"]}}
    r = c.post("/api/queue/add", json=body, headers=secured.headers(Role.DEVELOPER))
    assert r.status_code == 201, r.text
    # a submitter acts on its own tasks only: the one it submitted stands in for it
    sub = secured.headers(Role.SUBMITTER)
    own = c.post("/api/queue/add", json=task_body(secured, Role.SUBMITTER), headers=sub)
    assert own.status_code == 201, own.text
    task_of: dict[Role | None, str] = {Role.SUBMITTER: own.json()["task_id"]}
    ids = {
        "task_id": r.json()["task_id"],
        "bucket": "input",
        "key": "m.mp4",
        "token_id": "nosuchtoken",
        "worker_id": "nobody",
        "rest": "nowhere",
    }
    checked = 0
    for route in sorted(_api_routes(secured), key=lambda r: r.path):
        perm = route_permission(route)
        assert perm is not None
        for method in sorted(route.methods - {"HEAD"}):
            if (method, route.path) in OWN_TESTS:
                continue
            # a worker writes only to the output bucket (its reads are not limited)
            worker_files = route.path.startswith("/api/worker/v1/")
            console = route.path.startswith("/admin")
            for role in [*Role, None]:
                # a submitter's (or developer's) files are those under its own folder
                own = {
                    **ids,
                    "key": own_key(role, ids["key"]),
                    "task_id": task_of.get(role, ids["task_id"]),
                }
                path = _fill(route.path, {**ids, "bucket": "output"} if worker_files else own)
                headers = secured.headers(role)
                if role is Role.WORKER and route.path == "/api/workers/rotate":
                    headers = {"Authorization": f"Bearer {secured.enroll('rotating')}"}
                r = _call(secured, method, path, headers)
                where = f"{method} {route.path} as {role.value if role else 'no token'}"
                if perm is Permission.PUBLIC:
                    assert r.status_code not in (401, 403), f"{where}: {r.status_code}"
                elif role is None:
                    if console:
                        assert r.status_code == 303, f"{where}: {r.status_code}"
                        assert r.headers["location"].startswith("/admin/login"), where
                    else:
                        assert r.status_code == 401, f"{where}: {r.status_code} {r.text[:200]}"
                elif allows(role, perm):
                    assert r.status_code not in (401, 403), f"{where}: {r.status_code} {r.text}"
                else:
                    assert r.status_code == 403, f"{where}: {r.status_code} {r.text[:200]}"
                checked += 1
    print(f"permission matrix: {checked} route x role checks")
    assert checked > 150


def test_submitter_sees_and_acts_on_its_own_tasks_only(secured: SecuredApi) -> None:
    c = secured.client
    body = task_body(secured, Role.SUBMITTER)
    ops_body = task_body(secured, Role.OPERATOR)
    mine = c.post("/api/queue/add", json=body, headers=secured.headers(Role.SUBMITTER)).json()
    theirs = c.post("/api/queue/add", json=ops_body, headers=secured.headers(Role.OPERATOR)).json()
    assert mine["task"]["submitted_by"] == "submitter-user"
    assert theirs["task"]["submitter_by" if False else "submitted_by"] == "operator-user"
    sub = secured.headers(Role.SUBMITTER)
    listed = [t["id"] for t in c.get("/api/tasks", headers=sub).json()["tasks"]]
    assert listed == [mine["task_id"]]
    everyone = [t["id"] for t in c.get("/api/tasks", headers=admin_of(secured)).json()["tasks"]]
    assert set(everyone) == {mine["task_id"], theirs["task_id"]}
    for verb in ("get", "cancel", "retry"):
        path = f"/api/tasks/{theirs['task_id']}" + ("" if verb == "get" else f"/{verb}")
        r = c.request("GET" if verb == "get" else "POST", path, headers=sub)
        assert r.status_code == 403, (verb, r.text)
        assert "someone else" in r.json()["error"]["message"]
    assert c.post(f"/api/tasks/{mine['task_id']}/cancel", headers=sub).status_code == 200
    assert c.post(f"/api/tasks/{mine['task_id']}/retry", headers=sub).status_code == 200
    # paging a submitter's list stays exact when other people's tasks sit in between
    for _ in range(3):
        c.post("/api/queue/add", json=ops_body, headers=secured.headers(Role.OPERATOR))
        c.post("/api/queue/add", json=body, headers=sub)
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = c.get("/api/tasks", params=params, headers=sub).json()
        seen += [t["id"] for t in page["tasks"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)) == 4
    # an idempotency key another submitter's task holds returns nothing of that task
    keyed = {**ops_body, "idempotency_key": "shared-key"}
    first = c.post("/api/queue/add", json=keyed, headers=secured.headers(Role.OPERATOR))
    assert first.status_code == 201
    again = c.post("/api/queue/add", json={**body, "idempotency_key": "shared-key"}, headers=sub)
    assert again.status_code == 409 and "idempotency_key" in again.json()["error"]["message"]
    assert first.json()["task_id"] not in again.text
    own = {**body, "idempotency_key": "own-key"}
    made = c.post("/api/queue/add", json=own, headers=sub).json()
    assert c.post("/api/queue/add", json=own, headers=sub).json()["task_id"] == made["task_id"]


def admin_of(secured: SecuredApi) -> dict[str, str]:
    return secured.headers(Role.ADMIN)


def test_bad_credentials(secured: SecuredApi) -> None:
    c = secured.client
    for header in ("Bearer cvy_nope_nope", "Bearer garbage", "Basic dXNlcjpwYXNz", "Bearer "):
        r = c.get("/api/tasks", headers={"Authorization": header})
        assert r.status_code == 401, header
        assert r.json()["error"]["code"] == "unauthenticated"
    token = secured.tokens[Role.VIEWER]
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    assert c.get("/api/tasks", headers={"Authorization": f"Bearer {tampered}"}).status_code == 401
    assert c.get("/api/health").status_code == 200  # probes carry no token
