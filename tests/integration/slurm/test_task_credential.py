"""A task credential speaks for its one task and attempt, and for nothing else.

The Slurm executor holds two leases (tasks A and B) and asks the API for a credential
for A's attempt, as it does for each job it submits.  Against the real API with auth on
(in-process uvicorn over SQLite), that credential: reports on A's lease, ships A's log,
reads A's input and stages A's outputs, and reads A; and is refused (403) whenever it
names B: B's lease (heartbeat, progress, complete, fail), B's log, B's input, B's
staging, B itself; it cannot claim, wait for work, mint another task credential, rotate
into a worker credential, read the public API or log in to the console.  A forged one
is refused (401); once A's attempt is over its reports meet the lease (409); revoking
its executor's worker credential refuses it (401).  No Slurm needed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from conveyor.auth import task_credentials
from conveyor.models import ClaimedTask
from tests.apiserver import ApiServer, start_api

W = "/api/worker/v1"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiServer]:
    server = start_api(tmp_path / "api", auth=True)
    yield server
    server.stop()


def _client(api: ApiServer, token: str) -> httpx.Client:
    return httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _lease(c: ClaimedTask) -> dict[str, Any]:
    return c.lease.model_dump(mode="json")


def test_a_task_credential_speaks_for_its_task_and_attempt_only(
    api: ApiServer, tmp_path: Path
) -> None:
    svc = api.service
    admin = _client(api, svc.auth.create_token("admin1", "admin").token)
    worker = _client(api, svc.auth.create_token("exec1", "worker", worker_id="exec1").token)
    for name in ("a.bin", "b.bin"):
        assert admin.put(f"/api/files/input/{name}", content=name.encode()).status_code < 300
    ids = {}
    for name in ("a", "b"):
        body = {
            "kind": "container",
            "params": {
                "command": ["true"],
                "inputs": [{"bucket": "input", "key": f"{name}.bin"}],
            },
        }
        r = admin.post("/api/queue/add", json=body)
        assert r.status_code == 201, r.text
        ids[name] = r.json()["task_id"]
    r = worker.post(
        f"{W}/claim",
        json={"worker_id": "exec1", "kinds": ["container"], "capacity": 2, "lease_s": 60},
    )
    assert r.status_code == 200, r.text
    claimed = {c.task.id: c for c in map(ClaimedTask.model_validate, r.json()["claimed"])}
    a, b = claimed[ids["a"]], claimed[ids["b"]]

    r = worker.post(f"{W}/task-credential", json={"lease": _lease(a), "ttl_s": 3600})
    assert r.status_code == 200, r.text
    issued = r.json()
    assert (issued["task_id"], issued["attempt"], issued["worker_id"]) == (a.task.id, 1, "exec1")
    cred = issued["credential"]
    assert cred.startswith("cvt1.")
    job = _client(api, cred)
    refused: list[str] = []

    def refuse(resp: httpx.Response, what: str, status: int = 403) -> None:
        assert resp.status_code == status, f"{what}: {resp.status_code} {resp.text}"
        refused.append(f"{what} -> {status} {resp.json()['error']['code']}")

    # what it may do: its own lease, log, input, staging and task
    beat = {"worker": {"id": "exec1"}, "leases": [_lease(a)], "lease_s": 60}
    r = job.post(f"{W}/heartbeat", json=beat)
    assert r.status_code == 200 and r.json()["renewed"] == [a.task.id], r.text
    job_ids = [w.id for w in svc.workers()]
    assert f"exec1/{a.task.id}.1" in job_ids  # the job's own record, never the executor's
    assert next(w for w in svc.workers() if w.id.startswith("exec1/")).kinds == []
    progress = {"lease": _lease(a), "progress": {"percent": 5, "phase": "x", "message": "m"}}
    assert job.post(f"{W}/progress", json=progress).status_code == 204
    line = {"ts": datetime.now(UTC).isoformat(), "stream": "stdout", "line": "from the job"}
    logs = {"task_id": a.task.id, "attempt": 1, "worker_id": "exec1", "lines": [line]}
    assert job.post(f"{W}/logs", json=logs).status_code == 204
    assert job.get(f"{W}/tasks/{a.task.id}").json()["id"] == a.task.id
    assert job.get(f"{W}/files/input/a.bin").content == b"a.bin"
    mine = f".conveyor-staging/{a.task.id}/01aaaaaaaaaaaaaaaaaaaaaaaa-1/out.txt"
    assert job.put(f"{W}/files/output/{mine}", content=b"x").status_code == 200
    listed = job.get(f"{W}/list/output", params={"prefix": f".conveyor-staging/{a.task.id}/"})
    assert [o["key"] for o in listed.json()["items"]] == [mine]

    # what it may not: anything of B, and anything a worker's own credential does
    refuse(job.post(f"{W}/heartbeat", json={**beat, "leases": [_lease(b)]}), "heartbeat B")
    refuse(job.post(f"{W}/progress", json={**progress, "lease": _lease(b)}), "progress B")
    refuse(job.post(f"{W}/complete", json={"lease": _lease(b), "outputs": []}), "complete B")
    fail_b = {"lease": _lease(b), "error": "x", "retryable": False}
    refuse(job.post(f"{W}/fail", json=fail_b), "fail B")
    refuse(job.post(f"{W}/release", json={"lease": _lease(b)}), "release B")
    refuse(job.post(f"{W}/logs", json={**logs, "task_id": b.task.id}), "logs B")
    refuse(job.get(f"{W}/tasks/{b.task.id}"), "read task B")
    refuse(job.get(f"{W}/files/input/b.bin"), "read B's input")
    refuse(job.get(f"{W}/stat/input/b.bin"), "stat B's input")
    theirs = f".conveyor-staging/{b.task.id}/01aaaaaaaaaaaaaaaaaaaaaaaa-1/out.txt"
    refuse(job.put(f"{W}/files/output/{theirs}", content=b"x"), "write B's staging")
    refuse(job.get(f"{W}/files/output/{theirs}"), "read B's staging")
    refuse(job.delete(f"{W}/files/output/{theirs}"), "delete B's staging")
    refuse(
        job.get(f"{W}/list/output", params={"prefix": f".conveyor-staging/{b.task.id}/"}),
        "list B's staging",
    )
    refuse(job.get(f"{W}/list/input", params={"prefix": ""}), "list a bucket")
    refuse(job.put(f"{W}/files/output/{a.task.id}/final.txt", content=b"x"), "write unstaged", 409)
    other_attempt = f".conveyor-staging/{a.task.id}/01aaaaaaaaaaaaaaaaaaaaaaaa-2/out.txt"
    refuse(job.put(f"{W}/files/output/{other_attempt}", content=b"x"), "write attempt 2")
    claim = {"worker_id": "exec1", "kinds": ["container"], "capacity": 1, "lease_s": 60}
    refuse(job.post(f"{W}/claim", json=claim), "claim")
    refuse(job.post(f"{W}/wait", json={"timeout": 0}), "wait for work")
    refuse(job.post(f"{W}/task-credential", json={"lease": _lease(a)}), "mint a credential")
    refuse(job.post("/api/workers/rotate"), "rotate into a worker credential")
    refuse(job.get("/api/tasks"), "read the public API")
    refuse(job.get("/api/files/input/b.bin"), "read files through the public API")
    login = httpx.post(
        f"{api.url}/admin/login",
        data={"token": cred, "next": "/admin"},
        headers={"origin": api.url},
        follow_redirects=False,
    )
    assert login.status_code == 401 and "cannot log in" in login.text
    refused.append("console login -> 401")

    # a worker's own credential cannot mint one for an attempt it does not hold
    other = _client(api, svc.auth.create_token("exec2", "worker", worker_id="exec2").token)
    r = other.post(f"{W}/task-credential", json={"lease": {**_lease(a), "worker_id": "exec2"}})
    refuse(r, "another worker mints one for A", 409)

    # forged or altered: refused before anything in it is trusted
    head, body, mac = cred.split(".")
    forged = task_credentials.sign(
        b"k" * 32, task_credentials.TaskScope(b.task.id, 1, "exec1", 0, 2**31)
    )
    for bad in (f"{head}.{body}x.{mac}", f"{head}.{body}.{mac[:-2]}AA", forged):
        refuse(_client(api, bad).post(f"{W}/progress", json=progress), "forged", 401)

    # its attempt over: the lease fences it (409), the task is not readable any more
    assert (
        job.post(
            f"{W}/fail", json={"lease": _lease(a), "error": "x", "retryable": False}
        ).status_code
        == 200
    )
    refuse(job.post(f"{W}/progress", json=progress), "progress after the attempt", 409)
    refuse(job.get(f"{W}/tasks/{a.task.id}"), "read the task after the attempt", 409)

    # its executor revoked: its job's credential goes with it
    r = worker.post(f"{W}/task-credential", json={"lease": _lease(b), "ttl_s": 3600})
    job_b = _client(api, r.json()["credential"])
    beat_b = {"worker": {"id": "exec1"}, "leases": [_lease(b)], "lease_s": 60}
    assert job_b.post(f"{W}/heartbeat", json=beat_b).status_code == 200
    assert admin.delete("/api/workers/exec1/credential").status_code == 200
    deadline = time.monotonic() + 10
    while (status := job_b.post(f"{W}/heartbeat", json=beat_b).status_code) == 200:
        assert time.monotonic() < deadline, "the task credential outlived its worker's"
        time.sleep(0.5)
    assert status == 401
    refused.append("after the executor's credential was revoked -> 401")
    print("\n".join(refused))


def test_task_credentials_are_signed_scoped_and_expire() -> None:
    key = b"s" * 32
    scope = task_credentials.TaskScope("t" * 26, 2, "exec1", 100, 200)
    token = task_credentials.sign(key, scope)
    got = task_credentials.verify(key, token, 150)
    assert (got.task_id, got.attempt, got.worker_id) == ("t" * 26, 2, "exec1")
    assert got.job_worker_id == f"exec1/{'t' * 26}.2"
    for bad, reason in (
        (token, "expired"),
        (task_credentials.sign(b"x" * 32, scope), "bad_signature"),
        ("cvt1.nope", "malformed"),
    ):
        with pytest.raises(task_credentials.TaskCredentialError) as exc:
            task_credentials.verify(key, bad, 250 if reason == "expired" else 150)
        assert exc.value.reason == reason
    assert timedelta(days=14).total_seconds() == task_credentials.MAX_TTL_S
