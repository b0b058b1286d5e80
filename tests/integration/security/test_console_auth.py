"""Console login, session cookie, CSRF, role-aware pages, audit page and headers."""

from __future__ import annotations

import re

from conveyor.auth.roles import Role
from conveyor.web.security import SESSION_COOKIE

from .conftest import SecuredApi
from .test_permissions import task_body


def _login(secured: SecuredApi, role: Role) -> str:
    """Log in through the form; return the page's CSRF token."""
    c = secured.client
    c.cookies.clear()
    r = c.get("/admin/tasks", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/admin/login")
    r = c.post(
        "/admin/login",
        data={"token": secured.tokens[role], "next": "/admin/tasks"},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    assert r.headers["location"] == "/admin/tasks"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert "Secure" not in cookie  # plain http here; https sets it
    assert secured.tokens[role] not in cookie  # the cookie names the token, never holds it
    page = c.get("/admin/tasks")
    assert page.status_code == 200
    m = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
    assert m, "no CSRF token on the page"
    assert f'"X-CSRF-Token": "{m.group(1)}"' in page.text  # htmx sends it on every request
    return m.group(1)


def _submit(secured: SecuredApi, role: Role = Role.ADMIN) -> str:
    body = task_body(secured, role)
    r = secured.client.post("/api/queue/add", json=body, headers=secured.headers(role))
    assert r.status_code == 201, r.text
    return str(r.json()["task_id"])


def test_login_csrf_and_logout(secured: SecuredApi) -> None:
    c = secured.client
    task_id = _submit(secured)
    csrf = _login(secured, Role.OPERATOR)
    page = c.get(f"/admin/tasks/{task_id}")
    assert 'id="cancel-task"' in page.text
    assert 'id="whoami-role"' in page.text and "operator" in page.text

    # the session cookie alone cannot change anything: the CSRF token must come too
    r = c.post(f"/admin/tasks/{task_id}/cancel", data={}, follow_redirects=False)
    assert r.status_code == 403 and "CSRF" in r.text
    r = c.post(
        f"/admin/tasks/{task_id}/cancel",
        data={},
        headers={"X-CSRF-Token": "wrong"},
        follow_redirects=False,
    )
    assert r.status_code == 403
    r = c.post(
        f"/admin/tasks/{task_id}/cancel",
        data={},
        headers={"X-CSRF-Token": csrf, "HX-Request": "true"},
    )
    assert r.status_code == 200, r.text
    admin = secured.headers(Role.ADMIN)
    assert c.get(f"/api/tasks/{task_id}", headers=admin).json()["status"] == "cancelled"
    # a form field works as well as the header (no JavaScript)
    r = c.post(f"/admin/tasks/{task_id}/retry", data={"csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303

    r = c.post("/admin/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303
    c.cookies.clear()
    assert c.get("/admin/tasks", follow_redirects=False).status_code == 303


def test_viewer_sees_no_actions_and_is_refused(secured: SecuredApi) -> None:
    c = secured.client
    task_id = _submit(secured)
    csrf = _login(secured, Role.VIEWER)
    page = c.get(f"/admin/tasks/{task_id}").text
    assert 'id="cancel-task"' not in page
    tasks = c.get("/admin/tasks").text
    assert 'id="bulk-cancel"' not in tasks and 'id="bulk-retry"' not in tasks
    assert "/admin/tasks/new" not in tasks  # no "add task" for a viewer
    assert 'id="clear-start"' not in c.get("/admin/queue").text
    r = c.post(f"/admin/tasks/{task_id}/cancel", data={"csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 403
    assert c.get("/admin/audit").status_code == 403


def test_revoking_the_token_ends_the_session(secured: SecuredApi) -> None:
    c = secured.client
    issued = secured.auth.create_token("temp", Role.VIEWER)
    secured.tokens[Role.VIEWER] = issued.token
    _login(secured, Role.VIEWER)
    assert c.get("/admin/tasks").status_code == 200
    secured.auth.revoke_token(issued.record.id)
    r = c.get("/admin/tasks", follow_redirects=False)
    assert r.status_code == 303 and "/admin/login" in r.headers["location"]


def test_bad_login_is_refused_audited_and_rate_limited(secured: SecuredApi) -> None:
    c = secured.client
    r = c.post("/admin/login", data={"token": "cvy_bad_bad"}, follow_redirects=False)
    assert r.status_code == 401 and SESSION_COOKIE not in r.headers.get("set-cookie", "")
    r = c.post(
        "/admin/login",
        data={"token": secured.tokens[Role.WORKER]},
        follow_redirects=False,
    )
    assert r.status_code == 401  # a worker credential is no console login
    r = c.post(
        "/admin/login",
        data={"token": secured.tokens[Role.ADMIN]},
        headers={"Origin": "https://evil.example"},
        follow_redirects=False,
    )
    assert r.status_code == 401  # login CSRF from another site
    _login(secured, Role.ADMIN)
    audit = c.get("/admin/audit")
    assert audit.status_code == 200
    assert audit.text.count('data-action="login"') == 4
    from conveyor.web.security import RateLimiter

    c.app.state.rate_limiters["login"] = RateLimiter(2)  # type: ignore[attr-defined]
    answers = [c.post("/admin/login", data={"token": "x"}) for _ in range(3)]
    assert [r.status_code for r in answers] == [401, 401, 429]
    assert 1 <= int(answers[2].headers["Retry-After"]) <= 61  # the console page says it too


def test_security_headers(secured: SecuredApi) -> None:
    c = secured.client
    _login(secured, Role.ADMIN)
    r = c.get("/admin")
    csp = r.headers["content-security-policy"]
    assert (
        "script-src 'self'" in csp
        and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    )
    assert "frame-ancestors 'none'" in csp
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "same-origin"
    assert "<script>" not in r.text  # every script is a file: the CSP allows no inline one
    assert c.get("/api/health").headers["x-content-type-options"] == "nosniff"


def test_submitter_console_shows_its_own_tasks_only(secured: SecuredApi) -> None:
    c = secured.client
    theirs = _submit(secured, Role.OPERATOR)
    mine = _submit(secured, Role.SUBMITTER)
    _login(secured, Role.SUBMITTER)
    for path in (
        "/admin",
        "/admin/tasks",
        "/admin/queue",
        "/admin/events?view=dashboard&once=1",
        "/admin/events?view=queue&once=1",
    ):
        text = c.get(path).text
        assert mine in text, path
        assert theirs not in text, path
    assert c.get(f"/admin/tasks/{theirs}").status_code == 403
    assert c.get(f"/admin/events?view=task&task={theirs}&once=1").status_code == 403
    watched = c.get(f"/admin/events?view=tasks&watch={theirs},{mine}&once=1").text
    assert theirs not in watched
