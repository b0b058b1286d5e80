"""Container tasks through the faces of a real ``conveyor up`` (local-process runner).

The REST add, the log as server-sent events, ``conveyor run --follow`` and
seed 003's ``/train`` running examples/train_mlp (PyTorch on the CPU) to
completion, killed mid-run and resumed from its checkpoint on the retry.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import FAST_ENV, Server, launch, wait_task

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "examples" / "train_mlp" / "train.py"


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[Server]:
    env = {
        **FAST_ENV,
        "CONVEYOR_CONTAINER_RUNNER": "local",
        "CONVEYOR_GPUS": "none",
        "CONVEYOR_TRAIN_IMAGE": "",
        "CONVEYOR_TRAIN_COMMAND": json.dumps([sys.executable, str(TRAIN)]),
    }
    s = launch(tmp_path, "up", env=env)
    try:
        yield s
    finally:
        s.stop()


def sse(client: httpx.Client, path: str) -> Iterator[tuple[float, str, dict[str, Any]]]:
    """(arrival time, event, data) as the server sends them."""
    with client.stream("GET", path, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        event, data = "message", []
        for line in r.iter_lines():
            if line == "":
                if data:
                    yield time.monotonic(), event, json.loads("\n".join(data))
                event, data = "message", []
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())


def test_add_a_container_task_and_follow_its_log_as_events(srv: Server) -> None:
    c = srv.client
    script = "for i in 1 2 3 4; do echo tick $i; sleep 0.5; done"
    r = c.post(
        "/api/queue/add",
        json={"kind": "container", "params": {"command": ["sh", "-c", script]}},
    )
    assert r.status_code == 201, r.text
    task_id = r.json()["task_id"]
    got = list(sse(c, f"/api/tasks/{task_id}/logs?follow=true"))
    ticks = [(t, d) for t, e, d in got if e == "log" and d["line"].startswith("tick")]
    assert [d["line"] for _, d in ticks] == ["tick 1", "tick 2", "tick 3", "tick 4"]
    assert ticks[-1][0] - ticks[0][0] > 0.8  # delivered as printed, not all at the end
    assert got[-1][1] == "end" and got[-1][2]["status"] == "completed"
    seqs = [d["seq"] for _, e, d in got if e == "log"]
    assert seqs == sorted(seqs)
    # a reconnect resumes after the last event it saw
    again = list(sse(c, f"/api/tasks/{task_id}/logs?follow=true&after={seqs[-2]}"))
    assert [d["seq"] for _, e, d in again if e == "log"] == seqs[-1:]


def test_bad_container_params_are_refused(srv: Server) -> None:
    r = srv.client.post(
        "/api/queue/add", json={"kind": "container", "params": {"image": "x", "gpus": -2}}
    )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_params"
    assert srv.client.get("/api/tasks/nope/logs?follow=true").status_code == 404


def test_cli_run_follow(srv: Server) -> None:
    env = {**os.environ, "CONVEYOR_URL": srv.url}
    cmd = [sys.executable, "-m", "conveyor", "run", "--local", "-f", "-e", "WHO=cli", "--"]
    ok = subprocess.run(
        [*cmd, "sh", "-c", 'echo "hello $WHO"; echo warn >&2'],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "#1 hello cli" in ok.stdout
    assert "#1 [stderr] warn" in ok.stdout
    assert ": completed" in ok.stdout
    bad = subprocess.run(
        [*cmd[:5], "--max-attempts", "1", "-f", "--", "sh", "-c", "exit 5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "failed (job failed: exit code 5)" in bad.stdout


def test_cli_show_says_why_a_task_waits(srv: Server) -> None:
    env = {**os.environ, "CONVEYOR_URL": srv.url}
    conveyor = [sys.executable, "-m", "conveyor"]
    added = subprocess.run(
        [*conveyor, "run", "--local", "--gpus", "2", "--", "true"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert added.returncode == 0, added.stdout + added.stderr
    task_id = added.stdout.split()[1]
    time.sleep(1.0)  # several claim loops of the worker, which has no GPU (CONVEYOR_GPUS=none)
    shown = subprocess.run(
        [*conveyor, "show", task_id], env=env, capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "pending" in shown.stdout and "attempts 0/" in shown.stdout
    assert "waiting needs 2 GPUs; no worker has GPUs" in shown.stdout


def test_train_runs_the_example_and_resumes_after_a_crash(srv: Server) -> None:
    c = srv.client
    body = {
        "epochs": 2,
        "batch_size": 16,
        "steps_per_epoch": 10,
        "checkpoint_every": 5,
        "crash_at_step": 7,  # SIGKILLs itself at step 7 on the first attempt
    }
    r = c.post("/train", json=body)
    assert r.status_code == 201, r.text
    task_id = r.json()["task_id"]
    wait_task(c, task_id, timeout=120)
    deadline = time.monotonic() + 30  # outputs are visible once moved from staging
    while any(o.get("staged_key") for o in c.get(f"/api/tasks/{task_id}").json()["outputs"]):
        assert time.monotonic() < deadline, "outputs never committed"
        time.sleep(0.1)
    t = c.get(f"/train/{task_id}").json()
    assert t["status"] == "completed", t
    assert t["attempts"] == 2
    keys = {o["name"] for o in t["outputs"]}
    assert {"metrics.json", "checkpoints/latest.pt"} <= keys
    metrics = json.loads(
        (srv.data_dir / "buckets" / "output" / task_id / "metrics.json").read_text()
    )
    assert metrics["steps"] == 20 and metrics["resumed_from_step"] == 5
    lines = c.get(f"/api/tasks/{task_id}/logs").json()["lines"]
    first = [ln["line"] for ln in lines if ln["attempt"] == 1]
    second = [ln["line"] for ln in lines if ln["attempt"] == 2]
    assert any(x.startswith("epoch 1/2 step 7/20 loss ") for x in first)
    assert "Job exited with code 137" in " ".join(first)
    assert "resumed from checkpoint at step 5" in second
    assert any(x.startswith("epoch 2/2 step 20/20 loss ") for x in second)

    stats = c.get("/stats").json()
    assert stats["completed_today"] >= 1 and stats["workers"] == 1
    assert c.get("/health").json()["status"] == "healthy"
