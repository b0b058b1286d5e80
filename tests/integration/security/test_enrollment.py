"""Worker enrollment: one exchange per token; replayed, expired, forged, used ones refused."""

from __future__ import annotations

import base64
import json
import logging
import time
from datetime import datetime

import pytest

from conveyor.auth import enrollment
from conveyor.auth.roles import Role
from conveyor.auth.service import ENROLL_KEY
from conveyor.web.security import RateLimiter

from .conftest import SecuredApi


def _enroll(secured: SecuredApi, token: str, name: str = "gpu-1") -> tuple[int, dict[str, object]]:
    r = secured.client.post("/api/workers/enroll", json={"token": token, "name": name})
    return r.status_code, r.json()


def _new_token(secured: SecuredApi, **body: str) -> str:
    r = secured.client.post(
        "/api/workers/enrollment-tokens", json=body, headers=secured.headers(Role.ADMIN)
    )
    assert r.status_code == 201, r.text
    out = r.json()
    left = datetime.fromisoformat(out["expires_at"]).timestamp() - time.time()
    assert 0 < left <= 301, left  # 5 minutes unless asked otherwise
    return str(out["token"])


def test_fresh_token_enrolls_once(secured: SecuredApi, caplog: pytest.LogCaptureFixture) -> None:
    token = _new_token(secured, name="gpu-1", pool="gpu")
    status, body = _enroll(secured, token)
    assert status == 200, body
    assert body["worker_id"] == "gpu-1"
    assert set(body) == {"worker_id", "credential", "expires_at"}
    cred = str(body["credential"])
    exp = datetime.fromisoformat(str(body["expires_at"]))
    assert exp.tzinfo is not None and exp.timestamp() > time.time() + 29 * 86400
    # the credential is a worker's: the worker protocol yes, the rest of the API no
    hdr = {"Authorization": f"Bearer {cred}"}
    assert secured.client.get("/api/tasks", headers=hdr).status_code == 403

    with caplog.at_level(logging.WARNING):
        status, again = _enroll(secured, token)
    assert status == 401
    assert "already used" in again["error"]["message"]  # type: ignore[index]
    assert any("enrollment refused" in r.getMessage() for r in caplog.records)


def test_expired_forged_replayed_and_misnamed_tokens_are_refused(secured: SecuredApi) -> None:
    key = secured.auth._key(ENROLL_KEY)
    now = int(time.time())

    expired = enrollment.sign(
        key, enrollment.EnrollmentClaims("n-expired", now - 600, now - 300, None, None)
    )
    status, body = _enroll(secured, expired)
    assert status == 401 and "expired" in body["error"]["message"]  # type: ignore[index]

    good = _new_token(secured)
    head, payload, sig = good.split(".")
    forged_sig = sig[:-2] + ("AA" if not sig.endswith("AA") else "BB")
    status, body = _enroll(secured, f"{head}.{payload}.{forged_sig}")
    assert status == 401 and "signature" in body["error"]["message"]  # type: ignore[index]

    # a payload rewritten to live longer, signature kept: also a forgery
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["exp"] += 86400
    longer = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    status, body = _enroll(secured, f"{head}.{longer}.{sig}")
    assert status == 401 and "signature" in body["error"]["message"]  # type: ignore[index]

    # signed with another server's key
    other = enrollment.sign(
        b"k" * 32, enrollment.EnrollmentClaims("n-other", now, now + 300, None, None)
    )
    assert _enroll(secured, other)[0] == 401

    # the genuine token still works once (the forgeries did not burn it) ...
    assert _enroll(secured, good, "gpu-2")[0] == 200
    # ... and a second, validly signed token carrying the same nonce is a replay
    replay = enrollment.sign(
        key,
        enrollment.EnrollmentClaims(claims["n"], now, now + 300, None, None),
    )
    status, body = _enroll(secured, replay, "gpu-3")
    assert status == 401 and "already used" in body["error"]["message"]  # type: ignore[index]

    scoped = _new_token(secured, name="gpu-9")
    status, body = _enroll(secured, scoped, "intruder")
    assert status == 403 and "gpu-9" in body["error"]["message"]  # type: ignore[index]
    assert _enroll(secured, "not-a-token")[0] == 401

    audit = secured.client.get(
        "/api/audit", params={"limit": 100}, headers=secured.headers(Role.ADMIN)
    ).json()
    refused = [e for e in audit["events"] if e["action"] == "worker.enroll" and not e["ok"]]
    assert len(refused) == 7, refused
    assert all(e["ip"] for e in refused)


def test_rotate_and_revoke(secured: SecuredApi) -> None:
    c = secured.client
    status, body = _enroll(secured, _new_token(secured, name="gpu-r"), "gpu-r")
    assert status == 200
    old = {"Authorization": f"Bearer {body['credential']}"}
    r = c.post("/api/workers/rotate", headers=old)
    assert r.status_code == 200, r.text
    rotated = r.json()
    assert rotated["worker_id"] == "gpu-r" and rotated["credential"] != body["credential"]
    new = {"Authorization": f"Bearer {rotated['credential']}"}
    r = c.post("/api/workers/rotate", headers=old)
    assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]

    # an operator may not revoke; an admin may, and the worker's next call is refused
    assert (
        c.delete(
            "/api/workers/gpu-r/credential", headers=secured.headers(Role.OPERATOR)
        ).status_code
        == 403
    )
    r = c.delete("/api/workers/gpu-r/credential", headers=secured.headers(Role.ADMIN))
    assert r.status_code == 200 and r.json()["revoked"] == 1
    assert c.post("/api/workers/rotate", headers=new).status_code == 401
    assert (
        c.delete("/api/workers/gpu-r/credential", headers=secured.headers(Role.ADMIN)).status_code
        == 404
    )


def test_enroll_is_rate_limited(secured: SecuredApi) -> None:
    secured.client.app.state.rate_limiters["enroll"] = RateLimiter(5)  # type: ignore[attr-defined]
    answers = [
        secured.client.post("/api/workers/enroll", json={"token": "cve1.x.y", "name": "gpu-1"})
        for _ in range(7)
    ]
    assert [r.status_code for r in answers] == [401] * 5 + [429, 429]
    assert all("Retry-After" not in r.headers for r in answers[:5])
    for r in answers[5:]:  # the header agrees with the message, within the minute
        wait = int(r.headers["Retry-After"])
        assert 1 <= wait <= 61, wait
        assert f"try again in {wait} s" in r.json()["error"]["message"]
