"""Issue 19, show-point 2: a transcode task's events reach a receiver the test runs on
127.0.0.1 (allowed by the admin setting), signed and verified with the Standard
Webhooks reference library, through a minute of 500s and a SIGKILL of the API.

``conveyor up`` runs in a subprocess (API, worker, dispatcher); the receiver answers
500 for ``CONVEYOR_TEST_WEBHOOK_FAIL_S`` seconds (60 by default), then 200.  While
every try is refused the task completes and the API is killed with SIGKILL; restarted
on the same data, it delivers every event (queued, started, completed), each at least
once, in order, none lost.  Then ``conveyor events`` prints the same events.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook

from tests.conftest import FAST_ENV, launch, need_tool, wait_task
from tests.webhook_receiver import Receiver

FAIL_S = float(os.environ.get("CONVEYOR_TEST_WEBHOOK_FAIL_S", "60"))


def wait_for(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_transcode_events_arrive_signed_through_500s_and_a_sigkill(
    tmp_path: Path, small_clip: Path
) -> None:
    need_tool("ffmpeg", "ffprobe")
    t0 = time.time()
    receiver = Receiver(answer=lambda msg_id, n: 500 if time.time() < t0 + FAIL_S else 200)
    receiver.start()
    env = {
        **FAST_ENV,
        "CONVEYOR_EVENTS_ALLOW_CIDRS": "127.0.0.1/32",  # the admin allows the test's receiver
        "CONVEYOR_EVENTS_BACKOFF_BASE_S": "1",
        "CONVEYOR_EVENTS_BACKOFF_MAX_S": "4",
        "CONVEYOR_EVENTS_POLL_S": "0.2",
        "CONVEYOR_TRIGGER_ENABLED": "false",  # the upload makes no task of its own
    }
    srv = launch(tmp_path, "up", env=env)
    try:
        c = srv.client
        r = c.post("/api/webhooks", json={"url": receiver.url, "description": "e2e"})
        assert r.status_code == 201, r.text
        sub = r.json()
        assert (
            c.put("/api/files/input/clip.mp4", content=small_clip.read_bytes()).status_code == 201
        )
        meta = {"order": 42, "who": "测试"}
        r = c.post(
            "/api/queue/add",
            json={
                "input_key": "clip.mp4",
                "transcode_types": ["thumbnail"],
                "external_id": "job-42",
                "metadata": meta,
                "webhook": {"url": receiver.url, "events": ["completed"]},
            },
        )
        assert r.status_code == 201, r.text
        task_id, own_secret = r.json()["task_id"], r.json()["webhook_secret"]
        done = wait_task(c, task_id)
        assert done["status"] == "completed", done
        # every try so far refused: the events wait in the outbox, retried
        wait_for(lambda: len(receiver.snapshot()) >= 4, 30, "the first refused tries")
        assert receiver.taken() == []
        pending = c.get(f"/api/tasks/{task_id}/deliveries").json()["deliveries"]
        assert len(pending) == 4 and {d["state"] for d in pending} == {"pending"}
        refused_before_kill = len(receiver.snapshot())
    finally:
        srv.stop(signal.SIGKILL)
    print(f"API SIGKILLed {time.time() - t0:.1f} s in, after {refused_before_kill} refused tries")

    srv = launch(tmp_path, "up", env=env)  # the same data folder
    try:
        c = srv.client
        want = 4  # the subscription: queued, started, completed; the task's: completed
        wait_for(lambda: len(receiver.taken()) >= want, FAIL_S + 90, "every event delivered")
        elapsed = time.time() - t0
        taken = receiver.taken()
        tries = Counter(r.headers["webhook-id"] for r in receiver.snapshot())
        by_endpoint: dict[str, list[dict[str, Any]]] = {"sub": [], "own": []}
        for req in taken:
            try:
                payload = Webhook(sub["secret"]).verify(req.body, req.headers)
                by_endpoint["sub"].append(payload)
            except Exception:
                payload = Webhook(own_secret).verify(req.body, req.headers)
                by_endpoint["own"].append(payload)
            assert payload["id"] == req.headers["webhook-id"]
        subs = by_endpoint["sub"]
        assert [p["type"] for p in subs] == ["queued", "started", "completed"], subs
        assert [p["type"] for p in by_endpoint["own"]] == ["completed"]
        assert len({p["id"] for p in subs}) == 3  # none lost, stable ids
        for p in subs + by_endpoint["own"]:
            assert p["data"]["task_id"] == task_id
            assert p["data"]["external_id"] == "job-42" and p["data"]["metadata"] == meta
        started = subs[1]["data"]
        assert started["attempt"] == 1 and started["worker_id"]
        assert subs[2]["data"]["outputs"] and "key" in subs[2]["data"]["outputs"][0]
        # retried: the first event was refused (several times), then taken; the later ones
        # waited behind it (one task's events go to an endpoint in order)
        refused = [r for r in receiver.snapshot() if r.answered == 500]
        assert tries[subs[0]["id"]] >= 2 and len(refused) >= 3, tries
        assert all(r.at >= t0 + FAIL_S for r in taken)
        print(
            f"all {len(taken)} deliveries taken {elapsed:.1f} s after the start; tries per "
            f"event id: {sorted(tries.values())}"
        )
        log = c.get(f"/api/webhooks/{sub['id']}/deliveries").json()["deliveries"]
        assert {d["state"] for d in log} == {"delivered"}
        assert all(d["last_status"] == 200 for d in log)
        assert max(d["attempts"] for d in log) >= 2
        for d in sorted(log, key=lambda d: d["event_seq"]):
            print(f"  {d['event_type']:<9} tries {d['attempts']} last {d['last_status']}")

        # the stream: every event from the start; resumed after the first
        r = c.get("/api/events", params={"since": 0, "follow": "false"})
        ids = [ln[4:] for ln in r.text.splitlines() if ln.startswith("id: ")][1:]
        assert len(ids) == 3
        again = c.get("/api/events", params={"follow": "false"}, headers={"Last-Event-ID": ids[0]})
        assert [ln[4:] for ln in again.text.splitlines() if ln.startswith("id: ")][1:] == ids[1:]
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "conveyor",
                "events",
                "--since",
                "0",
                "--json",
                "--url",
                srv.url,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        printed = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
        assert [p["type"] for p in printed] == ["queued", "started", "completed"]
        assert [p["id"] for p in printed] == [p["id"] for p in subs]
        table = subprocess.run(
            [sys.executable, "-m", "conveyor", "events", "--since", "0", "--url", srv.url],
            capture_output=True,
            text=True,
            timeout=60,
        )
        print(table.stdout)
        assert task_id in table.stdout and "completed" in table.stdout
        assert (
            httpx.get(f"{srv.url}/api/tasks", params={"external_id": "job-42"}).json()["count"] == 1
        )

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "conveyor", *args, "--url", srv.url],
                capture_output=True,
                text=True,
                timeout=60,
                env={**os.environ, "COLUMNS": "250"},
            )

        listed = cli("webhooks", "list")
        assert listed.returncode == 0 and sub["id"] in listed.stdout, listed.stderr
        shown = cli("webhooks", "deliveries", sub["id"])
        assert shown.returncode == 0 and shown.stdout.count("delivered") == 3, shown.stdout
        again = cli("webhooks", "redeliver", sub["id"], log[0]["id"])
        assert again.returncode == 0 and "due now" in again.stdout, again.stderr
        wait_for(lambda: len(receiver.taken()) == want + 1, 30, "the redelivery")
        assert receiver.taken()[-1].headers["webhook-id"] == log[0]["event_id"]
        refused = cli("webhooks", "create", "http://10.0.0.1/hook")
        assert refused.returncode == 2 and "private address" in refused.stderr, refused.stderr
    finally:
        srv.stop()
        receiver.stop()
