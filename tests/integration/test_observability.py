"""What an operator watches: /metrics counts what a run did, JSON logs carry the task.

One ``conveyor up`` (real ffmpeg, SQLite) runs three thumbnails and one
rejected input; a second API process on the same database must report the
same numbers, since metrics are read from the backend, not from one
process's memory.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import FAST_ENV, Server, launch, make_clip, need_tool, wait_task


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` from a Prometheus text page."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(
    page: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return page[(name, tuple(sorted(labels.items())))]


@dataclass
class Run:
    server: Server
    tasks: dict[str, dict[str, object]]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    need_tool("ffmpeg", "ffprobe")
    tmp = tmp_path_factory.mktemp("observe")
    clip = make_clip(tmp / "clip.mp4", seconds=1.0)
    env = {**FAST_ENV, "LOG_FORMAT": "json", "CONVEYOR_TRIGGER_ENABLED": "false"}
    srv = launch(tmp, "up", env=env, extra=["--concurrency", "2"])
    try:
        with srv.client as c:
            ids = []
            for i in range(3):
                key = f"clip-{i}.mp4"
                assert (
                    c.put(f"/api/files/input/{key}", content=clip.read_bytes()).status_code == 201
                )
                r = c.post(
                    "/api/queue/add",
                    json={
                        "input_bucket": "input",
                        "input_key": key,
                        "transcode_types": ["thumbnail"],
                    },
                )
                assert r.status_code == 201, r.text
                ids.append(r.json()["task_id"])
            fake = b"this is not a video\n" * 50
            assert c.put("/api/files/input/fake.mp4", content=fake).status_code == 201
            r = c.post(
                "/api/queue/add",
                json={
                    "input_bucket": "input",
                    "input_key": "fake.mp4",
                    "transcode_types": ["thumbnail"],
                },
            )
            ids.append(r.json()["task_id"])
            tasks = {i: wait_task(c, i, timeout=90) for i in ids}
        yield Run(srv, tasks)
    finally:
        srv.stop()


def test_metrics_count_what_the_run_did(run: Run, tmp_path: Path) -> None:
    statuses = sorted(str(t["status"]) for t in run.tasks.values())
    assert statuses == ["completed", "completed", "completed", "failed"], run.tasks
    deadline = time.monotonic() + 15
    while True:  # slots are as of the worker's last heartbeat, read through a 2 s cache
        r = httpx.get(f"{run.server.url}/metrics", timeout=10)
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        page = samples(r.text)
        if value(page, "conveyor_worker_slots", state="busy") == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert value(page, "conveyor_tasks_total", kind="transcode", outcome="completed") == 3
    assert value(page, "conveyor_tasks_total", kind="transcode", outcome="failed") == 1
    assert value(page, "conveyor_tasks_total", kind="transcode", outcome="cancelled") == 0
    for st in ("pending", "delayed", "processing"):
        assert value(page, "conveyor_queue_tasks", kind="transcode", status=st) == 0
    assert value(page, "conveyor_task_duration_seconds_count", kind="transcode") == 3
    assert value(page, "conveyor_task_duration_seconds_bucket", kind="transcode", le="+Inf") == 3
    assert value(page, "conveyor_task_duration_seconds_sum", kind="transcode") > 0
    assert value(page, "conveyor_task_queue_wait_seconds_count", kind="transcode") == 4
    assert value(page, "conveyor_task_retries_total", kind="transcode") == 0, "bad input: no retry"
    assert value(page, "conveyor_workers") == 1
    assert value(page, "conveyor_worker_slots", state="free") == 2
    assert value(page, "conveyor_worker_slots", state="busy") == 0
    assert value(page, "conveyor_transcode_speed_ratio") > 0
    assert value(page, "conveyor_backend_up") == 1
    names = {name for name, _ in page}
    assert all(n.startswith(("conveyor_", "process_", "python_")) for n in names), names
    assert not any("task_id" in dict(labels) for _, labels in page), "no per-task labels"

    # another API process on the same database, which ran nothing itself, agrees
    db = run.server.data_dir / "conveyor.db"
    other = launch(
        tmp_path,
        "serve",
        extra=[
            "--backend",
            f"sqlite:///{db}",
            "--storage",
            f"file://{run.server.data_dir / 'buckets'}",
            "--no-trigger",
        ],
    )
    try:
        page2 = samples(httpx.get(f"{other.url}/metrics", timeout=10).text)
    finally:
        other.stop()
    for outcome, n in (("completed", 3), ("failed", 1)):
        assert value(page2, "conveyor_tasks_total", kind="transcode", outcome=outcome) == n
    assert value(page2, "conveyor_task_duration_seconds_count", kind="transcode") == 3


def test_json_logs_carry_task_attempt_and_worker(run: Run) -> None:
    records = []
    for line in run.server.log_text().splitlines():
        if line.strip():
            records.append(json.loads(line))  # every line is one JSON object
    assert records and all({"ts", "level", "logger", "message"} <= r.keys() for r in records)
    for task_id, task in run.tasks.items():
        mine = [r for r in records if r.get("task_id") == task_id]
        assert mine, f"no log record carries task {task_id}"
        final = "Task completed" if task["status"] == "completed" else "Task failed"
        assert any(r["message"].startswith(final) for r in mine), mine
        queued = [r for r in mine if r["message"].startswith("Task queued")]
        assert len(queued) == 1, "the API's own record of the submit names the task"
        ran = [r for r in mine if r is not queued[0]]
        assert all(r["attempt"] == 1 and r["worker_id"] for r in ran), ran


def test_status_cli_reports_health(run: Run) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "conveyor", "status", "--json", "--url", run.server.url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["status"] == "healthy" and doc["ready"] is True
    assert doc["checks"] == {"backend": "ok", "storage": "ok"}
    assert doc["queue"]["workers"] == 1
    r = httpx.get(f"{run.server.url}/api/ready", timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "ready"
    t0 = time.monotonic()
    httpx.get(f"{run.server.url}/api/v1/monitoring/health", timeout=10).raise_for_status()
    assert time.monotonic() - t0 < 5
