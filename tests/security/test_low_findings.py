"""Issue 13, finding 8 (the auth and tenancy part of the low items).

Against a real ``conveyor serve`` with auth on:

* ``/openapi.json``, ``/docs`` and ``/redoc`` need a token, like every route but
  the health probes;
* anonymous ``/api/health`` and ``/api/v1/monitoring/health`` show no queue counts
  (a caller with a token may see them);
* logout ends the session on the server (the old cookie no longer reads
  ``/api/tasks``), and ``/admin/logout`` is refused without the session's CSRF token
  or from another origin;
* ``params.timeout_s`` has an upper bound for every kind (``1e12`` killed the
  worker's timer thread with OverflowError and the task ran unlimited);
* a submitter sees its own counts in ``/api/queue/status``, ``/stats`` and the
  console dashboard, not everyone's.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from .auth_server import AuthServer, auth_server, which_conveyor

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    print("server code:", which_conveyor())
    with auth_server(tmp_path_factory.mktemp("low-findings")) as a:
        a.token("alice", "submitter")
        a.token("watcher", "viewer")
        yield a


def test_the_api_schema_and_its_viewers_need_a_token(api: AuthServer) -> None:
    with api.client() as anonymous:
        for path in ("/openapi.json", "/docs", "/redoc"):
            r = anonymous.get(path)
            assert r.status_code == 401, f"{path} without a token: {r.status_code}"
    with api.client(api.tokens["watcher"]) as c:
        assert c.get("/openapi.json").json()["paths"]
        assert c.get("/docs").status_code == 200


def test_anonymous_health_shows_no_queue_counts(api: AuthServer) -> None:
    with api.client() as anonymous:
        for path in ("/api/health", "/api/v1/monitoring/health", "/health"):
            r = anonymous.get(path)
            assert r.status_code == 200, (path, r.text)
            body = r.json()
            assert "queue" not in body, f"{path} tells anyone the queue: {body['queue']}"
            assert not {"pending", "processing"} & set(body), body
    with api.client(api.tokens["watcher"]) as c:
        assert "pending" in c.get("/api/v1/monitoring/health").json()["queue"]


def _login(api: AuthServer, token: str) -> tuple[httpx.Client, str]:
    host = api.url.split("//", 1)[1]
    c = httpx.Client(base_url=api.url, timeout=30, follow_redirects=False)
    r = c.post(
        "/admin/login",
        data={"token": token, "next": "/admin"},
        headers={"Origin": api.url, "Host": host},
    )
    assert r.status_code == 303, r.text
    page = c.get("/admin")
    found = re.search(r'<meta name="csrf-token" content="([^"]+)"', page.text)
    assert found, "no CSRF token on the console page"
    return c, found.group(1)


def test_logout_ends_the_session_on_the_server(api: AuthServer) -> None:
    c, csrf = _login(api, api.tokens["alice"])
    cookie = dict(c.cookies)
    assert c.get("/api/tasks").status_code == 200
    # a cross-site form (no CSRF token) must not log anyone out, nor may another origin
    r = c.post("/admin/logout", data={})
    assert r.status_code == 403, f"logout without the CSRF token: {r.status_code}"
    r = c.post(
        "/admin/logout", data={"csrf_token": csrf}, headers={"Origin": "https://evil.example"}
    )
    assert r.status_code == 403, f"logout from another origin: {r.status_code}"
    assert c.get("/api/tasks").status_code == 200, "a refused logout ended the session"
    r = c.post("/admin/logout", data={"csrf_token": csrf})
    assert r.status_code == 303, r.text
    c.close()
    with httpx.Client(base_url=api.url, cookies=cookie, timeout=30) as stolen:
        r = stolen.get("/api/tasks")
        assert r.status_code == 401, (
            f"the logged-out cookie still reads /api/tasks: {r.status_code}"
        )
        page = stolen.get("/admin", follow_redirects=False)
        assert page.status_code == 303 and "/admin/login" in page.headers["location"]


@pytest.mark.parametrize(
    ("kind", "key", "extra"),
    [
        ("transcode", "alice/t.mp4", {"transcode_types": ["thumbnail"]}),
        ("docparse", "alice/d.pdf", {}),
    ],
)
def test_every_timeout_has_an_upper_bound(
    api: AuthServer, kind: str, key: str, extra: dict[str, object]
) -> None:
    with api.client(api.tokens["alice"]) as c:
        assert c.put(f"/api/files/input/{key}", content=b"\0" * 64).status_code == 201
        body = {"kind": kind, "input_bucket": "input", "input_key": key, "params": {}}
        body["params"] = {**extra, "timeout_s": 1e12}
        r = c.post("/api/queue/add", json=body)
        assert r.status_code in (400, 422), f"{kind} params.timeout_s=1e12: {r.status_code}"
        assert "timeout_s" in r.text
        body["params"] = {**extra, "timeout_s": 3600}
        assert c.post("/api/queue/add", json=body).status_code == 201
        body["timeout_s"], body["params"] = 1e12, extra
        assert c.post("/api/queue/add", json=body).status_code in (400, 422)


def test_a_submitter_sees_its_own_counts(api: AuthServer) -> None:
    with api.client(api.admin) as c:
        assert c.put("/api/files/input/global.mp4", content=b"\0" * 64).status_code == 201
        for _ in range(3):
            body = {"input_bucket": "input", "input_key": "global.mp4", "priority": 1}
            assert c.post("/api/queue/add", json=body).status_code == 201
        everyone = c.get("/api/queue/status").json()
    with api.client(api.tokens["alice"]) as c:
        assert c.put("/api/files/input/alice/own.mp4", content=b"\0" * 64).status_code == 201
        body = {"input_bucket": "input", "input_key": "alice/own.mp4"}
        assert c.post("/api/queue/add", json=body).status_code == 201
        mine = [t for t in c.get("/api/tasks", params={"status": "pending"}).json()["tasks"]]
        queue = c.get("/api/queue/status").json()
        stats = c.get("/stats").json()
        dash = c.get("/admin").text
    assert everyone["pending"] >= 3
    assert queue["pending"] == len(mine), f"alice sees the queue's counts: {queue}"
    assert stats["pending"] == len(mine), f"alice sees everyone's /stats: {stats}"
    shown = re.search(r'id="stat-pending">([0-9,]+)<', dash)
    assert shown, "no pending count on the dashboard"
    assert int(shown.group(1).replace(",", "")) == len(mine), (
        f"the dashboard shows alice {shown.group(1)} pending, not her {len(mine)}"
    )
