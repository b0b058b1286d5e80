"""End to end: a real `conveyor up` process, real uploads, real ffmpeg, ffprobe checks."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Server, make_clip, need_tool, wait_task

ALL_TYPES = [
    "mp4_standard",
    "mp4_smooth",
    "hdlbr_h265",
    "lcd_h265",
    "h265_mute",
    "custom_mute_preview",
    "thumbnail",
]


@pytest.fixture(scope="session")
def hd_clip(clips_dir: Path) -> Path:
    # 2 s: the preview is its first second (min(preview_seconds, duration / 2)), and seven
    # 1080p encodes (four of them x265) cost a third less than with 3 s
    return make_clip(clips_dir / "hd.mp4", width=1920, height=1080, seconds=2.0)


def ffprobe(path: Path) -> dict[str, Any]:
    need_tool("ffprobe")
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(json.loads(out))


def upload(server: Server, path: Path, key: str) -> None:
    r = server.client.put(f"/api/files/input/{key}", content=path.read_bytes())
    assert r.status_code == 201, r.text


def download(server: Server, bucket: str, key: str, dest: Path) -> Path:
    r = server.client.get(f"/api/files/{bucket}/{key}")
    assert r.status_code == 200, r.text
    dest.write_bytes(r.content)
    return dest


def test_all_seven_types(server: Server, hd_clip: Path, tmp_path: Path) -> None:
    upload(server, hd_clip, "clips/hd.mp4")
    r = server.client.post(
        "/api/queue/add",
        json={"input_bucket": "input", "input_key": "clips/hd.mp4", "transcode_types": ALL_TYPES},
    )
    assert r.status_code == 201, r.text
    task = wait_task(server.client, r.json()["task_id"], timeout=240)
    assert task["status"] == "completed", task
    assert task["attempts"] == 1
    outputs = {o["name"]: o for o in task["outputs"]}
    assert sorted(outputs) == sorted(ALL_TYPES)
    src_duration = float(ffprobe(hd_clip)["format"]["duration"])
    for name, o in outputs.items():
        assert o["bucket"] == "output"
        assert o["key"].startswith("clips/hd/"), o["key"]
        assert o["size"] > 0
        local = download(server, o["bucket"], o["key"], tmp_path / Path(o["key"]).name)
        info = ffprobe(local)
        video = [s for s in info["streams"] if s["codec_type"] == "video"]
        audio = [s for s in info["streams"] if s["codec_type"] == "audio"]
        assert len(video) == 1, name
        w, h = int(video[0]["width"]), int(video[0]["height"])
        assert abs(w / h - 16 / 9) < 0.02, f"{name} aspect {w}x{h}"
        if name == "thumbnail":
            assert video[0]["codec_name"] == "mjpeg"
            assert local.read_bytes()[:3] == b"\xff\xd8\xff", "thumbnail is a JPEG"
            continue
        codec = {"mp4_standard": "h264", "mp4_smooth": "h264", "custom_mute_preview": "h264"}.get(
            name, "hevc"
        )
        assert video[0]["codec_name"] == codec, name
        duration = float(info["format"]["duration"])
        if name in ("h265_mute", "custom_mute_preview"):
            assert audio == [], f"{name} must have no audio"
        else:
            assert len(audio) == 1 and audio[0]["codec_name"] == "aac", name
        if name == "custom_mute_preview":
            assert duration < src_duration - 0.5
        else:
            assert duration > src_duration * 0.9, name
        if name == "mp4_standard":
            assert w <= 848 and h <= 480 and w >= 840
        if name == "mp4_smooth":
            assert w <= 640 and h <= 360 and w >= 630
    logs = [ln["line"] for ln in server.client.get(f"/api/tasks/{task['id']}/logs").json()["lines"]]
    for phrase in ("Task received", "Transcode started", "Transcode completed", "Upload completed"):
        assert any(phrase in ln for ln in logs), (phrase, logs)
    server_log = server.log_text()
    assert f"[task={task['id']}]" in server_log
    assert "Task received" in server_log and "Transcode completed" in server_log


def test_no_audio_input(server: Server, clips_dir: Path) -> None:
    clip = make_clip(clips_dir / "silent.mp4", seconds=2.0, audio=False)
    upload(server, clip, "silent.mp4")
    r = server.client.post(
        "/api/queue/add",
        json={
            "input_key": "silent.mp4",
            "transcode_types": ["mp4_standard", "hdlbr_h265", "thumbnail"],
        },
    )
    task = wait_task(server.client, r.json()["task_id"])
    assert task["status"] == "completed", task


def test_bad_inputs_fail_clearly_and_service_survives(
    server: Server, small_clip: Path, tmp_path: Path
) -> None:
    c = server.client
    # a text file renamed .mp4
    fake = tmp_path / "fake.mp4"
    fake.write_text("this is not a video\n" * 50)
    upload(server, fake, "fake.mp4")
    fake_id = c.post(
        "/api/queue/add", json={"input_key": "fake.mp4", "transcode_types": ["thumbnail"]}
    ).json()["task_id"]
    # a truncated video
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(small_clip.read_bytes()[: small_clip.stat().st_size // 2])
    upload(server, truncated, "truncated.mp4")
    trunc_id = c.post(
        "/api/queue/add", json={"input_key": "truncated.mp4", "transcode_types": ["mp4_smooth"]}
    ).json()["task_id"]
    # request-level errors
    r = c.post("/api/queue/add", json={"input_key": "../secret.mp4"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_key"
    r = c.post("/api/queue/add", json={"input_key": "fake.mp4", "transcode_types": ["4k_hdr"]})
    assert (
        r.status_code == 400 and "unknown transcode type '4k_hdr'" in r.json()["error"]["message"]
    )
    r = c.post("/api/queue/add", content=b"", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "empty" in r.json()["error"]["message"]

    for task_id in (fake_id, trunc_id):
        t = wait_task(c, task_id)
        assert t["status"] == "failed", t
        assert t["attempts"] == 1, "bad input is not retried"
        assert t["error_code"] == "invalid_input"
        assert "video" in str(t["error"]).lower() or "truncated" in str(t["error"]).lower(), t
    # nothing was published for the failed tasks
    assert not (server.data_dir / "buckets" / "output" / "fake").exists()
    # and the service still works
    upload(server, small_clip, "good.mp4")
    ok = c.post(
        "/api/queue/add", json={"input_key": "good.mp4", "transcode_types": ["thumbnail"]}
    ).json()["task_id"]
    assert wait_task(c, ok)["status"] == "completed"
    assert server.proc.poll() is None


def test_upload_trigger(server: Server, small_clip: Path) -> None:
    inbox = server.data_dir / "buckets" / "input"
    # written straight into the folder, slowly: must not be picked up half-way
    dest = inbox / "drop" / "slow.mp4"
    dest.parent.mkdir(parents=True, exist_ok=True)
    data = small_clip.read_bytes()
    import time

    with open(dest, "wb") as fh:
        for i in range(0, len(data), len(data) // 5 + 1):
            fh.write(data[i : i + len(data) // 5 + 1])
            fh.flush()
            time.sleep(0.3)
    (inbox / "notes.txt").write_text("not a video")
    # one via the API too
    upload(server, small_clip, "api-upload.mov")
    deadline = time.monotonic() + 30
    tasks: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        tasks = server.client.get("/api/tasks", params={"limit": 50}).json()["tasks"]
        if len(tasks) >= 2 and all(t["status"] == "completed" for t in tasks):
            break
        time.sleep(0.3)
    keys = sorted(t["input"]["key"] for t in tasks)
    assert keys == ["api-upload.mov", "drop/slow.mp4"], keys
    for t in tasks:
        assert t["trigger"] == "upload"
        assert t["status"] == "completed", t
        assert t["params"]["transcode_types"] == ["mp4_standard", "mp4_smooth", "thumbnail"]
    time.sleep(1.5)  # several more scans: still one task per upload
    assert server.client.get("/api/tasks").json()["count"] == 2


def test_cli_submit_wait(server: Server, small_clip: Path) -> None:
    import os
    import sys

    env = {**os.environ, "COLUMNS": "250"}

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "conveyor",
            "submit",
            str(small_clip),
            "--types",
            "mp4_smooth,thumbnail",
            "--wait",
            "--url",
            server.url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "completed" in out.stdout
    # the file landed in the watched input bucket: the trigger must not queue it again
    import time

    time.sleep(2.0)
    tasks = server.client.get("/api/tasks").json()["tasks"]
    assert len(tasks) == 1, tasks
    assert tasks[0]["params"]["transcode_types"] == ["mp4_smooth", "thumbnail"]
    listing = subprocess.run(
        [sys.executable, "-m", "conveyor", "tasks", "--status", "completed", "--url", server.url],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert listing.returncode == 0 and "small.mp4" in listing.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "conveyor", "submit", "input/nope.mp4", "--url", server.url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 2 and "input object not found" in bad.stderr

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "conveyor", *args, "--url", server.url],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
        )

    task_id = tasks[0]["id"]
    shown = cli("show", task_id)
    assert shown.returncode == 0 and "completed" in shown.stdout and "thumbnail" in shown.stdout
    logs = cli("logs", task_id)
    assert logs.returncode == 0 and "Transcode completed" in logs.stdout
    status = cli("queue", "status")
    assert status.returncode == 0 and "completed today" in status.stdout
    retried = cli("retry", task_id)
    assert retried.returncode == 2 and "only failed or cancelled" in retried.stderr
    assert cli("queue", "clear", "--yes").returncode == 0
