"""The audit log records who did what from where; limits and redaction hold."""

from __future__ import annotations

import json
import logging

import pytest
from typer.testing import CliRunner

from conveyor.auth.roles import Role
from conveyor.cli.auth import announce_auth, guard_exposure
from conveyor.config import load_settings

from .conftest import SecuredApi


def test_audit_records_actions_with_actor_role_and_address(secured: SecuredApi) -> None:
    c = secured.client
    admin, op = secured.headers(Role.ADMIN), secured.headers(Role.OPERATOR)
    body = {"kind": "container", "params": {"image": "busybox", "command": ["true"]}}
    task_id = c.post("/api/queue/add", json=body, headers=secured.headers(Role.DEVELOPER)).json()[
        "task_id"
    ]
    assert c.post(f"/api/tasks/{task_id}/cancel", headers=op).status_code == 200
    assert c.post(f"/api/tasks/{task_id}/retry", headers=op).status_code == 200
    assert c.post("/api/queue/clear", headers=op).json()["cancelled"] == 1
    made = c.post("/api/tokens", json={"name": "ci", "role": "viewer"}, headers=admin).json()
    assert c.delete(f"/api/tokens/{made['id']}", headers=admin).status_code == 200
    events = c.get("/api/audit", params={"limit": 100}, headers=admin).json()["events"]
    got = [(e["action"], e["actor"], e["role"]) for e in reversed(events)]
    want = [
        ("submit", "developer-user", "developer"),
        ("cancel", "operator-user", "operator"),
        ("retry", "operator-user", "operator"),
        ("clear", "operator-user", "operator"),
        ("token.create", "admin-user", "admin"),
        ("token.revoke", "admin-user", "admin"),
    ]
    assert [g for g in got if g[0] != "worker.enroll"] == want
    assert all(e["ip"] == "testclient" and e["at"] for e in events)
    page = c.get("/api/audit", params={"limit": 2}, headers=admin).json()
    assert len(page["events"]) == 2 and page["next_cursor"]
    assert c.get("/api/audit", headers=op).status_code == 403


def test_body_size_and_json_depth_limits(secured: SecuredApi) -> None:
    c = secured.client
    admin = secured.headers(Role.ADMIN)
    huge = b'{"kind": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    r = c.post(
        "/api/queue/add", content=huge, headers={**admin, "content-type": "application/json"}
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    deep = "[" * 200 + "]" * 200
    r = c.post(
        "/api/queue/add",
        content=f'{{"params": {{"a": {deep}}}}}',
        headers={**admin, "content-type": "application/json"},
    )
    assert r.status_code == 400 and "deeper" in r.json()["error"]["message"]
    # brackets inside strings do not count
    body = {"kind": "container", "params": {"image": "busybox", "command": ["echo", "[" * 100]}}
    assert c.post("/api/queue/add", json=body, headers=admin).status_code == 201
    # uploads stream under their own, larger limit
    assert (
        c.put("/api/files/input/big.bin", content=b"\0" * 900_000, headers=admin).status_code == 201
    )


def test_token_values_never_reach_logs_or_task_records(
    secured: SecuredApi, caplog: pytest.LogCaptureFixture
) -> None:
    c = secured.client
    used = dict(secured.tokens)
    with caplog.at_level(logging.DEBUG):
        made = c.post(
            "/api/tokens",
            json={"name": "ci", "role": "developer"},
            headers=secured.headers(Role.ADMIN),
        ).json()
        used["made"] = made["token"]
        body = {"kind": "container", "params": {"image": "busybox", "command": ["true"]}}
        r = c.post(
            "/api/queue/add", json=body, headers={"Authorization": f"Bearer {made['token']}"}
        )
        task = r.json()["task"]
        c.get("/api/tasks", headers={"Authorization": "Bearer cvy_wrong_guess"})
        enroll, _ = secured.auth.create_enrollment_token(name="gpu-x")
        used["enroll"] = enroll
        cred = c.post("/api/workers/enroll", json={"token": enroll, "name": "gpu-x"}).json()
        used["cred"] = cred["credential"]
        c.post("/api/workers/enroll", json={"token": enroll, "name": "gpu-x"})  # refused, logged
        c.get("/api/audit", headers=secured.headers(Role.ADMIN))
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    stored = json.dumps(
        c.get(f"/api/tasks/{task['id']}", headers=secured.headers(Role.ADMIN)).json()
    )
    audit = c.get("/api/audit", params={"limit": 1000}, headers=secured.headers(Role.ADMIN)).text
    assert len(caplog.records) >= 3
    for name, value in used.items():
        assert value not in text, f"{name} token in the logs"
        assert value not in stored, f"{name} token in the task record"
        assert value not in audit, f"{name} token in the audit log"
    assert task["submitted_by"] == "ci"


def test_non_loopback_without_auth_refuses_to_start(tmp_path: object) -> None:
    import typer

    s = load_settings(api_host="0.0.0.0", auth=False)
    with pytest.raises(typer.Exit) as exc:
        guard_exposure(s, insecure=False)
    assert exc.value.exit_code == 2
    guard_exposure(s, insecure=True)  # accepted risk
    guard_exposure(load_settings(api_host="127.0.0.1", auth=False), insecure=False)
    guard_exposure(load_settings(api_host="::1", auth=False), insecure=False)
    guard_exposure(load_settings(api_host="0.0.0.0", auth=True), insecure=False)
    # the real command line says why
    from conveyor.cli import app

    res = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--no-auth", "--port", "1"])
    assert res.exit_code == 2
    assert "refusing to serve on 0.0.0.0 without authentication" in res.output.replace("\n", " ")


def test_first_start_prints_an_admin_token_once(
    secured: SecuredApi, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    log = logging.getLogger("conveyor.test")
    auth = secured.auth
    for rec in auth.list_tokens():  # as on a fresh database
        if rec.role is Role.ADMIN:
            auth.revoke_token(rec.id)
    with caplog.at_level(logging.INFO):
        announce_auth(auth.settings, auth, log)
        first = capsys.readouterr().err
        announce_auth(auth.settings, auth, log)
        second = capsys.readouterr().err
    token = next(w for w in first.split() if w.startswith("cvy_"))
    assert auth.authenticate(token).role is Role.ADMIN
    assert "cvy_" not in second  # shown once
    assert token not in caplog.text
    off = load_settings(auth=False)
    with caplog.at_level(logging.WARNING):
        announce_auth(off, auth, log)
    assert "Authentication is OFF" in caplog.text
