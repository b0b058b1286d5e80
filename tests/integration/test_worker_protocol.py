"""The worker protocol's HTTP face: long-poll, errors, key checks, a credential's scope.

The contract suite already runs every lifecycle rule through these routes;
this file checks what only the HTTP face has: claim with ``wait_s``, the
generation handshake of ``/wait``, error bodies, that idle long-polls hold
no thread-pool threads, and that one worker's credential cannot speak for
another (real worker credentials from the token store, auth on).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conveyor.models import InputRef, Task
from tests.apiserver import ApiServer, start_api

V1 = "/api/worker/v1"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiServer]:
    server = start_api(tmp_path / "api")
    yield server
    server.stop()


def submit(api: ApiServer, kind: str = "k1") -> Task:
    task, _ = api.service.backend.submit(Task(kind=kind, input=InputRef(bucket="in", key="a")))
    return task


def claim_body(**kw: Any) -> dict[str, Any]:
    return {"worker_id": "w1", "kinds": ["k1"], "capacity": 1, "lease_s": 30, **kw}


def test_claim_waits_for_work_when_asked(api: ApiServer) -> None:
    http = httpx.Client(base_url=api.url, timeout=30)
    threading.Timer(0.3, submit, args=(api,)).start()
    r = http.post(f"{V1}/claim", json=claim_body(wait_s=10))
    assert r.status_code == 200, r.text
    assert [c["task"]["kind"] for c in r.json()["claimed"]] == ["k1"]


def test_wait_returns_at_once_when_work_came_since_the_claim(api: ApiServer) -> None:
    http = httpx.Client(base_url=api.url, timeout=30)
    gen = http.post(f"{V1}/claim", json=claim_body()).json()["generation"]
    submit(api)  # lands after the empty claim, before the wait
    t0 = time.monotonic()
    woke = http.post(f"{V1}/wait", json={"timeout": 10, "since": gen}).json()
    assert time.monotonic() - t0 < 5
    assert woke["generation"] != gen
    assert http.post(f"{V1}/claim", json=claim_body()).json()["claimed"]


def test_idle_long_polls_hold_no_threads(api: ApiServer) -> None:
    """Sixty idle workers (more than the pool's 40 threads) wait; the API still serves claims.

    Were each wait to hold a pool thread, the claim would queue behind them
    and only run once some had ended; here it runs while all sixty still
    wait, and one submit then wakes them all.
    """

    async def scenario() -> tuple[bool, list[int]]:
        async with httpx.AsyncClient(base_url=api.url, timeout=60) as http:
            gen = (await http.post(f"{V1}/claim", json=claim_body())).json()["generation"]
            body = {"timeout": 30, "since": gen}
            waits = [asyncio.create_task(http.post(f"{V1}/wait", json=body)) for _ in range(60)]
            await asyncio.sleep(0.5)
            r = await http.post(f"{V1}/claim", json=claim_body())  # runs in the thread pool
            assert r.status_code == 200
            all_waiting = not any(w.done() for w in waits)
            await asyncio.to_thread(submit, api)
            done = await asyncio.gather(*waits)
            return all_waiting, [w.status_code for w in done]

    all_waiting, codes = asyncio.run(scenario())
    assert all_waiting, "a claim had to wait for idle long-polls to end"
    assert codes == [200] * 60


def test_fencing_and_bad_input_get_clear_errors(api: ApiServer) -> None:
    http = httpx.Client(base_url=api.url, timeout=30)
    submit(api)
    lease = http.post(f"{V1}/claim", json=claim_body()).json()["claimed"][0]["lease"]
    forged = {**lease, "token": "forged"}
    r = http.post(f"{V1}/complete", json={"lease": forged, "outputs": []})
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "lease_lost"
    assert "lease" in r.json()["error"]["message"]

    r = http.post(f"{V1}/claim", json=claim_body(capacity=0))
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    r = http.post(f"{V1}/claim", json=claim_body(wait_s=3600))
    assert r.status_code == 422

    r = http.get(f"{V1}/files/input/a/%2E%2E/etc/passwd")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_key"
    r = http.put(f"{V1}/files/input/.conveyor-x", content=b"x")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_key"
    r = http.get(f"{V1}/files/input/missing.mp4")
    assert r.status_code == 404 and r.json()["error"]["code"] == "object_not_found"

    # a local store cannot hold "a" beside "a/b": a clear 409, not a 500
    assert http.put(f"{V1}/files/input/a/b", content=b"x").status_code == 200
    r = http.put(f"{V1}/files/input/a", content=b"x")
    assert r.status_code == 409 and "folder" in r.json()["error"]["message"]
    assert http.delete(f"{V1}/files/input/a").status_code == 204
    assert http.get(f"{V1}/stat/input/a/b").json()["size"] == 1


def test_a_big_output_list_completes(api: ApiServer) -> None:
    """A parsed document lists every extracted figure: 6,000 outputs (about 1.5 MB of
    JSON, over the 1 MiB limit of the public API) still complete over the worker
    protocol, whose bodies may be 16 times larger; past that a clear 413."""
    task = submit(api)
    http = httpx.Client(base_url=api.url, timeout=30)
    lease = http.post(f"{V1}/claim", json=claim_body()).json()["claimed"][0]["lease"]
    outputs = [
        {"name": "image", "bucket": "output", "key": f"doc/images/p{i:05d}_fig.jpg", "size": i}
        for i in range(6000)
    ]
    r = http.post(f"{V1}/complete", json={"lease": lease, "outputs": outputs})
    assert r.status_code == 200, r.text
    done = api.service.backend.get(task.id)
    assert done is not None and len(done.outputs) == 6000
    huge = http.post(f"{V1}/logs", content=b"{" + b" " * (17 * 1024 * 1024) + b"}")
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "payload_too_large"


def test_a_credential_speaks_for_its_own_worker_only(tmp_path: Path) -> None:
    api = start_api(tmp_path / "api", auth=True)
    auth = api.service.auth
    cred_a = auth.create_token("worker-a", "worker", worker_id="worker-a").token
    cred_b = auth.create_token("worker-b", "worker", worker_id="worker-b").token
    try:
        a = httpx.Client(base_url=api.url, headers={"authorization": f"Bearer {cred_a}"})
        b = httpx.Client(base_url=api.url, headers={"authorization": f"Bearer {cred_b}"})
        submit(api)
        body = claim_body(worker_id="worker-a")
        assert b.post(f"{V1}/claim", json=body).status_code == 403
        lease = a.post(f"{V1}/claim", json=body).json()["claimed"][0]["lease"]
        hb = {"worker": {"id": "worker-a"}, "leases": [lease], "lease_s": 30}
        assert a.post(f"{V1}/heartbeat", json=hb).json()["renewed"] == [lease["task_id"]]
        assert b.post(f"{V1}/heartbeat", json=hb).status_code == 403
        logs = {
            "task_id": lease["task_id"],
            "attempt": 1,
            "worker_id": "worker-b",
            "lines": [{"ts": "2026-01-01T00:00:00Z", "line": "not mine"}],
        }
        assert b.post(f"{V1}/logs", json=logs).status_code == 403
        assert httpx.post(f"{api.url}{V1}/heartbeat", json=hb).status_code == 401
        # staged outputs: only the attempt holding the lease writes them
        staged = (
            f"{V1}/files/output/.conveyor-staging/{lease['task_id']}/"
            f"01m9800000000000000000000-{lease['attempt']}/done.txt"
        )
        assert a.put(staged, content=b"ok").status_code == 200
        assert b.put(staged, content=b"not mine").status_code == 409
        assert b.post(f"{V1}/complete", json={"lease": lease, "outputs": []}).status_code == 403
        assert a.post(f"{V1}/complete", json={"lease": lease, "outputs": []}).status_code == 200
        late = a.put(staged, content=b"late")  # the attempt is over: so is its staging
        assert late.status_code == 409 and late.json()["error"]["code"] == "lease_lost"
        # files: an enrolled worker reads any bucket its tasks name, writes only the output
        w = api.service.storage.writer("input", "clip.mp4")
        w.write(b"in")
        w.commit()
        assert a.get(f"{V1}/files/input/clip.mp4").content == b"in"
        unstaged = a.put(f"{V1}/files/output/done.txt", content=b"ok")  # outputs are staged
        assert unstaged.status_code == 409 and unstaged.json()["error"]["code"] == "unstaged_write"
        for r in (
            a.put(f"{V1}/files/input/clip.mp4", content=b"overwrite"),
            a.delete(f"{V1}/files/input/clip.mp4"),
            a.post(f"{V1}/uploads/input/new.bin", params={"size": 3}),
        ):
            assert r.status_code == 403, r.text
            assert "output bucket" in r.json()["error"]["message"]
        with api.service.storage.open("input", "clip.mp4") as fh:
            assert fh.read() == b"in"
    finally:
        api.stop()


def test_idle_remote_worker_wakes_on_a_postgres_notify_from_another_host(tmp_path: Path) -> None:
    """The API's one waiting thread relays LISTEN/NOTIFY to its long-polling workers.

    The submit comes from another engine handle, as from a second API host
    sharing the database.
    """
    from conveyor.backends.postgres import PostgresBackend
    from conveyor.remote.connection import ApiConnection
    from conveyor.remote.queue import RemoteQueue
    from tests.pgserver import require_cluster

    url = require_cluster().rolling_database()
    api = start_api(tmp_path / "api")
    sqlite, api.service.backend = api.service.backend, PostgresBackend(url)
    sqlite.close()
    other_host = PostgresBackend(url)
    worker = RemoteQueue(ApiConnection(api.url))
    try:
        assert worker.claim("w1", ["k1"], 1, 30) == []
        woke: list[float] = []

        def idle() -> None:
            worker.wait_for_work(20)
            woke.append(time.monotonic())

        t = threading.Thread(target=idle, daemon=True)
        t.start()
        time.sleep(0.5)
        assert woke == []
        other_host.submit(Task(kind="k1", input=InputRef(bucket="in", key="a")))
        t.join(15)
        assert woke, "the idle worker slept through the NOTIFY"
        assert [c.task.kind for c in worker.claim("w1", ["k1"], 1, 30)] == ["k1"]
    finally:
        worker.close()
        other_host.close()
        api.stop()


def test_the_client_retries_until_the_api_is_back_then_says_it_is_unreachable(
    tmp_path: Path,
) -> None:
    """An API that is restarting: connection refused, a real fault on a real port."""
    from conveyor.errors import RemoteUnavailable
    from conveyor.models import WorkerInfo
    from conveyor.remote.connection import ApiConnection
    from conveyor.remote.queue import RemoteQueue
    from tests.conftest import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started: list[ApiServer] = []
    later = threading.Timer(0.5, lambda: started.append(start_api(tmp_path / "api", port=port)))
    later.start()
    worker = RemoteQueue(ApiConnection(url, retries=6, backoff_s=0.1))
    try:
        # refused while the API starts, retried with back-off, then answered
        assert worker.heartbeat(WorkerInfo(id="w1"), [], 30).lost == []
    finally:
        later.join()
        for api in started:
            api.stop()
    with pytest.raises(RemoteUnavailable, match=f"cannot reach {url}"):
        RemoteQueue(ApiConnection(url, retries=2, backoff_s=0.01)).heartbeat(
            WorkerInfo(id="w1"), [], 30
        )


def test_a_waiting_claim_returns_the_task_once_submitted(api: ApiServer) -> None:
    """``claim_wait_s`` (``conveyor worker``): the empty claim itself waits on the API."""
    from conveyor.remote.connection import ApiConnection
    from conveyor.remote.queue import RemoteQueue

    worker = RemoteQueue(ApiConnection(api.url), claim_wait_s=10)
    threading.Timer(0.3, submit, args=(api,)).start()
    got = worker.claim("w1", ["k1"], 1, 30)
    assert [c.task.kind for c in got] == ["k1"]
    # an empty waited claim is already the wait: the loop's wait_for_work returns at once
    worker.claim_wait_s = 0.2
    assert worker.claim("w1", ["k1"], 1, 30) == []
    t0 = time.monotonic()
    worker.wait_for_work(20)
    assert time.monotonic() - t0 < 10
    worker.close()
