"""Events out through the API, in process on SQLite (and DynamoDB on moto) (docs/events.md): webhook
subscriptions and the address policy, a task's own webhook, caller data on tasks,
deliveries verified with the Standard Webhooks reference library, redelivery, the
event stream and its role scope."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from standardwebhooks.webhooks import Webhook

from conveyor.auth.roles import Role
from conveyor.config import load_settings
from conveyor.events import signing
from conveyor.events.model import Endpoint, new_endpoint_id
from conveyor.server.app import create_app
from conveyor.server.runtime import Runtime
from tests.webhook_receiver import Receiver


@pytest.fixture
def make_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., tuple[TestClient, Runtime]]]:
    monkeypatch.setenv("CONVEYOR_CONFIG", str(tmp_path / "none.yaml"))
    monkeypatch.setenv("CONVEYOR_EVENTS_POLL_S", "0.05")
    monkeypatch.setenv("CONVEYOR_EVENTS_BACKOFF_BASE_S", "0.05")
    clients: list[TestClient] = []

    def make(allow: str = "", **kw: Any) -> tuple[TestClient, Runtime]:
        monkeypatch.setenv("CONVEYOR_EVENTS_ALLOW_CIDRS", allow)
        settings = load_settings(data_dir=tmp_path, max_upload_bytes=1_000_000, **kw)
        runtime = Runtime.build(settings, with_worker=False, with_trigger=False)
        client = TestClient(create_app(runtime))
        client.__enter__()
        clients.append(client)
        return client, runtime

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def transcode_body(api: TestClient, **extra: Any) -> dict[str, Any]:
    r = api.put("/api/files/input/clip.mp4", content=b"\0" * 64)
    assert r.status_code == 201, r.text
    return {"input_key": "clip.mp4", "transcode_types": ["thumbnail"], **extra}


def wait_for(cond: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_refused_addresses_are_refused_at_subscription_with_the_reason(
    make_api: Callable[..., tuple[TestClient, Runtime]],
) -> None:
    """Issue 19, show-point 3: only the subscription is submitted; nothing is sent."""
    api, _ = make_api()
    cases = {
        "http://169.254.169.254/latest/meta-data/": "link-local address (the cloud metadata",
        "http://10.0.0.1/hook": "private address",
        "http://127.0.0.1:8080/hook": "loopback address",
        "http://[::1]/hook": "loopback address",
        "http://[::ffff:10.0.0.1]/hook": "private address",
        "http://192.168.1.20/hook": "private address",
        "http://100.64.0.1/hook": "not a public address",
    }
    for url, why in cases.items():
        r = api.post("/api/webhooks", json={"url": url})
        assert r.status_code == 400, (url, r.text)
        err = r.json()["error"]
        assert err["code"] == "webhook_refused", err
        assert why in err["message"] and "CONVEYOR_EVENTS_ALLOW_CIDRS" in err["message"], err
        print(f"{url} -> {r.status_code} {err['message']}")
    for url, why in {
        "ftp://example.com/x": "http:// or https://",
        "http://user:pw@example.com/": "no user or password",
        "https://": "names a host",
    }.items():
        r = api.post("/api/webhooks", json={"url": url})
        assert r.status_code == 400 and why in r.json()["error"]["message"], r.text
    # a task's own webhook is checked the same way, before the task is stored
    body = transcode_body(api, webhook={"url": "http://169.254.169.254/"})
    r = api.post("/api/queue/add", json=body)
    assert r.status_code == 400 and r.json()["error"]["code"] == "webhook_refused", r.text
    assert api.get("/api/tasks").json()["tasks"] == []
    assert api.get("/api/webhooks").json()["webhooks"] == []
    bad = {"url": "https://example.com/hook", "events": ["finished"]}
    r = api.post("/api/webhooks", json=bad)
    assert r.status_code == 400 and "unknown event type" in r.json()["error"]["message"]


def test_caller_data_on_tasks(make_api: Callable[..., tuple[TestClient, Runtime]]) -> None:
    api, _ = make_api()
    meta = {"order": 7, "customer": {"name": "张三", "tier": "gold"}, "tags": ["a"]}
    r = api.post("/api/queue/add", json=transcode_body(api, external_id="ord-7", metadata=meta))
    assert r.status_code == 201, r.text
    task_id = r.json()["task_id"]
    assert r.json()["task"]["metadata"] == meta and r.json()["task"]["external_id"] == "ord-7"
    api.post("/api/queue/add", json=transcode_body(api, external_id="ord-8"))
    got = api.get(f"/api/tasks/{task_id}").json()
    assert got["metadata"] == meta and got["external_id"] == "ord-7"
    listed = api.get("/api/tasks", params={"external_id": "ord-7"}).json()["tasks"]
    assert [t["id"] for t in listed] == [task_id]
    # the console: the task's page shows both; the task list filters on external_id
    page = api.get(f"/admin/tasks/{task_id}", headers={"accept-language": "zh-CN"}).text
    assert "调用方 ID" in page and "ord-7" in page and "gold" in page
    rows = api.get("/admin/tasks", params={"ext": "ord-7"}).text
    assert f'data-task="{task_id}"' in rows and rows.count('data-task="') == 1
    assert len(api.get("/api/tasks").json()["tasks"]) == 2
    big = {"blob": "x" * 5000}
    r = api.post("/api/queue/add", json=transcode_body(api, metadata=big))
    assert r.status_code == 400 and "at most 4096" in r.json()["error"]["message"], r.text
    r = api.post("/api/queue/add", json=transcode_body(api, external_id="x" * 300))
    assert r.status_code == 422 or r.status_code == 400


@pytest.mark.parametrize("engine", ["sqlite", "aws"])
def test_webhooks_deliver_signed_and_redeliver(
    make_api: Callable[..., tuple[TestClient, Runtime]], engine: str
) -> None:
    """On SQLite and on the AWS engine (moto; it answered 501 before it kept events)."""
    extra: dict[str, Any] = {}
    if engine == "aws":
        from tests.motoserver import require_server

        extra["backend_url"] = require_server().backend_url()
    receiver = Receiver().start()
    try:
        api, runtime = make_api(allow="127.0.0.1/32", **extra)
        assert runtime.dispatcher is not None
        r = api.post(
            "/api/webhooks",
            json={"url": receiver.url, "events": ["queued", "cancelled"], "description": "ops"},
        )
        assert r.status_code == 201, r.text
        sub = r.json()
        assert sub["secret"].startswith("whsec_")
        listed = api.get("/api/webhooks").json()["webhooks"]
        assert [h["id"] for h in listed] == [sub["id"]] and "secret" not in listed[0]
        assert "secret" not in api.get(f"/api/webhooks/{sub['id']}").json()
        # a task with its own webhook (the caller's secret) and one with params.webhook
        own_secret = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk="
        body = transcode_body(
            api,
            external_id="ord-1",
            metadata={"k": "v"},
            webhook={"url": receiver.url, "events": ["queued"], "secret": own_secret},
        )
        r = api.post("/api/queue/add", json=body)
        assert r.status_code == 201, r.text
        assert "webhook_secret" not in r.json()  # the caller gave its own
        task_id = r.json()["task_id"]
        body2 = transcode_body(api)
        body2["params"] = {"webhook": {"url": receiver.url, "events": ["cancelled"]}}
        r2 = api.post("/api/queue/add", json=body2)
        assert r2.status_code == 201, r2.text
        made_secret = r2.json()["webhook_secret"]
        task2 = r2.json()["task_id"]
        assert api.post(f"/api/tasks/{task2}/cancel").status_code == 200
        # subscription: 2 queued + 1 cancelled; task 1's webhook: queued; task 2's: cancelled
        wait_for(lambda: len(receiver.taken()) == 5)
        got = receiver.taken()
        secrets = [sub["secret"], own_secret, made_secret]
        for req in got:
            payload = None
            for s in secrets:  # exactly the endpoint's secret verifies it
                try:
                    payload = Webhook(s).verify(req.body, req.headers)
                    break
                except Exception:
                    continue
            assert payload is not None, req.headers
            assert payload["id"] == req.headers["webhook-id"]
        first = [
            json.loads(q.body) for q in got if json.loads(q.body)["data"]["task_id"] == task_id
        ]
        assert {p["type"] for p in first} == {"queued"}
        assert all(p["data"]["external_id"] == "ord-1" for p in first)
        assert all(p["data"]["metadata"] == {"k": "v"} for p in first)

        # the delivery logs: the task's, the subscription's
        mine = api.get(f"/api/tasks/{task_id}/deliveries").json()
        assert len(mine["deliveries"]) == 2
        assert {d["state"] for d in mine["deliveries"]} == {"delivered"}
        assert all(d["last_status"] == 200 for d in mine["deliveries"])
        log = api.get(f"/api/webhooks/{sub['id']}/deliveries").json()["deliveries"]
        assert [d["event_type"] for d in log] == ["cancelled", "queued", "queued"]
        # redeliver: the same event id again
        d = log[-1]
        r = api.post(f"/api/webhooks/{sub['id']}/deliveries/{d['id']}/redeliver")
        assert r.status_code == 200, r.text
        wait_for(lambda: len(receiver.taken()) == 6)
        assert receiver.taken()[-1].headers["webhook-id"] == d["event_id"]
        # the console: the task's deliveries on its page, the endpoint's log, both languages
        words = {
            "en-US,en;q=0.9": ("Webhook deliveries", "delivered", "Delivery log", "Redeliver"),
            "zh-CN,zh;q=0.9": ("Webhook 投递", "已送达", "投递记录", "重新投递"),
        }
        for lang, (title, state, log_title, button) in words.items():
            h = {"accept-language": lang}
            page = api.get(f"/admin/tasks/{task_id}", headers=h)
            assert page.status_code == 200 and title in page.text and state in page.text, lang
            assert page.text.count('data-delivery="') == 2
            assert receiver.url in page.text
            hooks = api.get("/admin/webhooks", headers=h)
            assert hooks.status_code == 200 and sub["id"] in hooks.text
            assert sub["secret"] not in hooks.text
            log_page = api.get(f"/admin/webhooks/{sub['id']}", headers=h)
            assert log_page.status_code == 200 and log_title in log_page.text
            assert log_page.text.count('data-delivery="') == 3 and button in log_page.text
        r = api.post(
            f"/admin/webhooks/{sub['id']}/deliveries/{d['id']}/redeliver",
            data={},
            follow_redirects=False,
        )
        assert r.status_code == 303, r.text
        wait_for(lambda: len(receiver.taken()) == 7)
        assert receiver.taken()[-1].headers["webhook-id"] == d["event_id"]
        r = api.post(f"/api/webhooks/{sub['id']}/deliveries/dlv_nope/redeliver")
        assert r.status_code == 404 and r.json()["error"]["code"] == "delivery_not_found"
        assert api.delete(f"/api/webhooks/{sub['id']}").status_code == 200
        r = api.get(f"/api/webhooks/{sub['id']}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "webhook_not_found"
    finally:
        receiver.stop()


def _sse(text: str) -> list[dict[str, Any]]:
    out = []
    for block in text.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if not line.startswith(":")
        )
        if "data" in fields:
            out.append(
                {
                    **json.loads(fields["data"]),
                    "sse_id": int(fields["id"]),
                    "event": fields["event"],
                }
            )
    return out


def test_event_stream_resumes_filters_and_is_role_scoped(
    make_api: Callable[..., tuple[TestClient, Runtime]],
) -> None:
    api, runtime = make_api(auth=True, auth_rate_limit=1000)
    auth = runtime.service.auth
    tokens = {
        r: auth.create_token(f"{r.value}-user", r).token for r in (Role.ADMIN, Role.SUBMITTER)
    }

    def h(role: Role) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens[role]}"}

    for role, key in ((Role.SUBMITTER, "submitter-user/a.mp4"), (Role.ADMIN, "b.mp4")):
        assert api.put(f"/api/files/input/{key}", content=b"\0", headers=h(role)).status_code == 201
        r = api.post(
            "/api/queue/add",
            json={"input_key": key, "transcode_types": ["thumbnail"]},
            headers=h(role),
        )
        assert r.status_code == 201, r.text
    admin_task = r.json()["task_id"]
    assert api.post(f"/api/tasks/{admin_task}/cancel", headers=h(Role.ADMIN)).status_code == 200

    every = _sse(api.get("/api/events?since=0&follow=false", headers=h(Role.ADMIN)).text)
    assert [e["event"] for e in every] == ["queued", "queued", "cancelled"]
    assert [e["sse_id"] for e in every] == sorted(e["sse_id"] for e in every)
    assert all(e["sse_id"] == e["seq"] for e in every)
    own = _sse(api.get("/api/events?since=0&follow=false", headers=h(Role.SUBMITTER)).text)
    assert [e["data"]["task_id"] for e in own] == [every[0]["data"]["task_id"]]
    # resume: Last-Event-ID wins over since
    rest = api.get(
        "/api/events?since=0&follow=false",
        headers={**h(Role.ADMIN), "Last-Event-ID": str(every[0]["sse_id"])},
    )
    assert [e["id"] for e in _sse(rest.text)] == [e["id"] for e in every[1:]]
    only = _sse(
        api.get("/api/events?since=0&follow=false&status=cancelled", headers=h(Role.ADMIN)).text
    )
    assert [e["event"] for e in only] == ["cancelled"]
    r = api.get("/api/events?since=0&follow=false&status=done", headers=h(Role.ADMIN))
    assert r.status_code == 400 and "unknown status" in r.json()["error"]["message"]
    r = api.get("/api/events?since=0&follow=false&kind=nope", headers=h(Role.ADMIN))
    assert r.status_code == 400 and "unknown kind" in r.json()["error"]["message"]
    # webhooks are for admins and operators
    r = api.post("/api/webhooks", json={"url": "https://example.com/"}, headers=h(Role.SUBMITTER))
    assert r.status_code == 403
    # a submitter sees its task's deliveries to its own webhook, not the subscriptions'
    store = runtime.service.events.store
    sub = Endpoint(
        id=new_endpoint_id(),
        url="https://ops.internal.example/hook",
        secret=signing.new_secret(),
        created_at=datetime.now(UTC),
    )
    store.add_endpoint(sub)
    own_task = every[0]["data"]["task_id"]
    mine = Endpoint(
        id=new_endpoint_id(),
        url="https://submitter.example/hook",
        secret=signing.new_secret(),
        created_at=datetime.now(UTC),
        task_id=own_task,
    )
    store.add_endpoint(mine)
    assert api.post(f"/api/tasks/{own_task}/cancel", headers=h(Role.SUBMITTER)).status_code == 200

    def both() -> bool:  # the cancelled event, fanned out by the API's dispatcher
        got = api.get(f"/api/tasks/{own_task}/deliveries", headers=h(Role.ADMIN)).json()
        return len(got["deliveries"]) == 2

    wait_for(both)
    seen = api.get(f"/api/tasks/{own_task}/deliveries", headers=h(Role.SUBMITTER)).json()
    assert {d["endpoint_id"] for d in seen["deliveries"]} == {mine.id}
    assert "ops.internal" not in json.dumps(seen)
    page = api.get(f"/admin/tasks/{own_task}", headers=h(Role.SUBMITTER)).text
    assert "submitter.example" in page and "ops.internal" not in page
    everyone = api.get(f"/api/tasks/{own_task}/deliveries", headers=h(Role.ADMIN)).json()
    assert {d["endpoint_id"] for d in everyone["deliveries"]} == {mine.id, sub.id}
