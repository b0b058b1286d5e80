"""A database restart and a storage outage are not the task's fault (issue 14, findings 4 and 5).

PostgreSQL + SeaweedFS, ``conveyor serve`` and one ``conveyor worker`` (the
stack of ``tests/chaos/faultrun.py``). After ``pg_ctl restart -m fast`` the
first use of each pooled connection used to raise ``AdminShutdown``, and a
completion failing that way burned the attempt; attempts that failed in a
second because S3 was down counted like a bad input, and back-offs of 5 s and
10 s were shorter than the outage. Now no attempt is failed or counted for it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.chaos.faultrun import RunConfig, Stack
from tests.conftest import make_clip, need_tool

TYPES = ["thumbnail", "mp4_smooth"]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    need_tool("ffmpeg", "ffprobe")
    s = Stack(tmp_path, RunConfig(workers=1, concurrency=2, lease_s=6.0))
    try:
        s.start()
        yield s
    finally:
        s.stop()


def submit(stack: Stack, tmp_path: Path, n: int, **extra: Any) -> list[str]:
    assert stack.s3 is not None
    clip = make_clip(tmp_path / "clip.mp4", width=320, height=240, seconds=3.0)
    client = stack.s3.client()
    ids = []
    with httpx.Client(base_url=stack.url, timeout=60) as api:
        for i in range(n):
            key = f"outage/{uuid.uuid4().hex[:8]}-{i}.mp4"
            client.upload_file(str(clip), stack.input_bucket, key)
            r = api.post(
                "/api/queue/add", json={"input_key": key, "transcode_types": TYPES, **extra}
            )
            assert r.status_code == 201, r.text
            ids.append(r.json()["task_id"])
    return ids


def tasks(stack: Stack, ids: list[str]) -> list[dict[str, Any]]:
    with httpx.Client(base_url=stack.url, timeout=30) as api:
        return [api.get(f"/api/tasks/{i}").json() for i in ids]


def wait_all(stack: Stack, ids: list[str], timeout: float = 240) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        got = tasks(stack, ids)
        if all(t["status"] in ("completed", "failed", "cancelled") for t in got):
            return got
        assert time.monotonic() < deadline, [(t["id"], t["status"]) for t in got]
        time.sleep(0.5)


def wait_running(stack: Stack, ids: list[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not any(t["status"] == "processing" for t in tasks(stack, ids)):
        assert time.monotonic() < deadline, "no task started"
        time.sleep(0.1)


def counted_failures(task: dict[str, Any]) -> list[tuple[str, str]]:
    """The attempts that ended any way but completed or handed back."""
    return [
        (h["outcome"], h["error"] or "")
        for h in task["history"]
        if h["outcome"] not in ("completed", "released")
    ]


def test_a_database_restart_fails_no_attempt(stack: Stack, tmp_path: Path) -> None:
    assert stack.pg is not None
    ids = submit(stack, tmp_path, 10)
    wait_running(stack, ids)
    for _ in range(3):  # while attempts run, report progress and complete
        stack.pg.restart("fast")
        time.sleep(1.5)
    done = wait_all(stack, ids)
    print(
        "after 3 restarts:",
        {t["id"][-6:]: (t["status"], t["attempts"], counted_failures(t)) for t in done},
    )
    assert [t["status"] for t in done] == ["completed"] * len(ids)
    assert [counted_failures(t) for t in done] == [[]] * len(ids), "an attempt failed for it"
    assert all(t["attempts"] == 1 for t in done)


def test_a_storage_outage_uses_up_no_attempts(stack: Stack, tmp_path: Path) -> None:
    assert stack.s3 is not None
    ids = submit(stack, tmp_path, 8, max_attempts=2)
    wait_running(stack, ids)
    stack.s3.halt()
    time.sleep(10)
    stack.s3.resume()
    done = wait_all(stack, ids, timeout=300)
    print(
        "after a 10 s S3 outage:",
        {t["id"][-6:]: (t["status"], t["attempts"], counted_failures(t)) for t in done},
    )
    assert [t["status"] for t in done] == ["completed"] * len(ids)
    assert [counted_failures(t) for t in done] == [[]] * len(ids), "an attempt was counted"
    assert all(t["attempts"] == 1 for t in done)
