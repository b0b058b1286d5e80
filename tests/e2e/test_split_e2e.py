"""End to end, split and stitch (issue 18, show point 2): a generated 6-minute clip is
split into chunk tasks by ``conveyor serve`` + two ``conveyor worker`` processes on one
SQLite file and one local store; one worker is SIGKILLed mid-chunk.  The stitched output
must hold exactly the input's frames, with monotonic timestamps, no audio gap at the
chunk boundaries (silencedetect finds no silence in a continuous tone), and a PSNR
against an unsplit encode of the same profile within 0.5 dB.  Real processes, real
ffmpeg; the clip is 426x240 (an ultrafast source) so the run stays short."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import FAST_ENV, Server, launch, need_tool, start_process

SECONDS = 360.0
FPS = 25
FRAMES = round(SECONDS * FPS)
TYPES = ["mp4_standard"]
ONE_SLOT = ["--concurrency", "1"]
# x264 preset veryfast for the profile under test (a config override of the built-in row):
# the split and the unsplit encode use the same profile, so the PSNR comparison holds, and
# the two encodes of 9000 frames take about 2.5x less CPU than at the built-in "medium"
ENV = {
    **FAST_ENV,
    "CONVEYOR_LEASE_SECONDS": "4",
    "CONVEYOR_TRANSCODE_ENCODER": "cpu",
    "CONVEYOR_TRANSCODE_PROFILES": json.dumps({"mp4_standard": {"preset": "veryfast"}}),
}


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_tool("ffmpeg", "ffprobe")
    path = tmp_path_factory.mktemp("split") / "long.mp4"
    # a keyframe every 2 s; a continuous tone, so any silence is a gap the stitch made
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y"]
    cmd += ["-f", "lavfi", "-i", f"testsrc2=size=426x240:rate={FPS}:duration={SECONDS}"]
    cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={SECONDS}"]
    cmd += ["-c:v", "libx264", "-preset", "ultrafast", "-g", "50", "-pix_fmt", "yuv420p"]
    cmd += ["-c:a", "aac", "-b:a", "64k", "-shortest", str(path)]
    subprocess.run(cmd, check=True, timeout=600)
    return path


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Server, dict[str, subprocess.Popen[bytes]]]]:
    server = launch(tmp_path, "serve", env=ENV, extra=["--no-trigger"])
    workers: dict[str, subprocess.Popen[bytes]] = {}
    for name in ("wa", "wb"):
        workers[name] = start_process(
            ["worker", "--data-dir", str(server.data_dir), "--worker-id", name, *ONE_SLOT],
            server.data_dir,
            tmp_path / f"worker-{name}.log",
            ENV,
        )
    try:
        yield server, workers
    finally:
        for proc in workers.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)
        server.stop()


def _probe(args: list[str], path: Path) -> str:
    return subprocess.run(
        ["ffprobe", "-v", "error", *args, "-of", "csv=p=0", str(path)],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout


def frame_count(path: Path) -> int:
    out = _probe(
        ["-count_frames", "-select_streams", "v:0", "-show_entries", "stream=nb_read_frames"], path
    )
    return int(out.strip().strip(","))


def packet_times(path: Path, stream: str) -> list[float]:
    out = _probe(["-select_streams", stream, "-show_entries", "packet=pts_time"], path)
    return [float(x.strip(",")) for x in out.split() if x.strip(",") not in ("", "N/A")]


def mean_psnr(path: Path, source: Path, width: int, height: int) -> float:
    graph = f"[1:v]scale={width}:{height},setsar=1,format=yuv420p[r];[0:v][r]psnr"
    err = subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostdin", "-i", str(path), "-i", str(source), *_lavfi(graph)],
        check=True,
        capture_output=True,
        text=True,
        timeout=900,
    ).stderr
    found = re.findall(r"PSNR .* average:([0-9.]+|inf)", err)
    assert found, err[-2000:]
    return float(found[-1].replace("inf", "99"))


_SILENCE = ["-af", "silencedetect=noise=-50dB:d=0.02", "-f", "null", "-"]


def _lavfi(graph: str) -> list[str]:
    return ["-lavfi", graph, "-f", "null", "-"]


def silences(path: Path) -> list[str]:
    err = subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostdin", "-i", str(path), "-map", "0:a", *_SILENCE],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    ).stderr
    return re.findall(r"silence_start: ([0-9.]+)", err)


def _get(client: httpx.Client, path: str) -> Any:
    r = client.get(path)
    assert r.status_code == 200, r.text
    return r.json()


def _download(client: httpx.Client, output: dict[str, Any], dest: Path) -> Path:
    r = client.get(f"/api/files/{output['bucket']}/{output['key']}")
    assert r.status_code == 200, r.text
    dest.write_bytes(r.content)
    return dest


def _submit(client: httpx.Client, key: str, **params: Any) -> str:
    r = client.post(
        "/api/queue/add",
        json={
            "input_bucket": "input",
            "input_key": key,
            "transcode_types": TYPES,
            "params": params,
        },
    )
    assert r.status_code == 201, r.text
    return str(r.json()["task_id"])


def _wait(client: httpx.Client, task_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t: dict[str, Any] = _get(client, f"/api/tasks/{task_id}")
        if t["status"] in ("completed", "failed", "cancelled"):
            return t
        time.sleep(0.5)
    raise AssertionError(f"task {task_id} not done after {timeout} s: {t}")


# a six-minute clip encoded twice (split, and unsplit for the PSNR) on two cores
@pytest.mark.timeout(900)
def test_long_clip_split_by_two_workers_one_killed(
    stack: tuple[Server, dict[str, subprocess.Popen[bytes]]], long_clip: Path, tmp_path: Path
) -> None:
    server, workers = stack
    client = server.client
    r = client.put("/api/files/input/clips/long.mp4", content=long_clip.read_bytes())
    assert r.status_code == 201, r.text
    started = time.monotonic()
    parent_id = _submit(client, "clips/long.mp4")  # 360 s > split_after (120 s): split

    # wait until wa is encoding a chunk, well into it, then kill it (and its ffmpeg)
    waiting_reason = None
    victim: dict[str, Any] | None = None
    deadline = time.monotonic() + 300
    while victim is None and time.monotonic() < deadline:
        parent = _get(client, f"/api/tasks/{parent_id}")
        assert parent["status"] not in ("failed", "cancelled"), parent
        waiting_reason = parent.get("waiting_reason") or waiting_reason
        if parent["children"]:
            kids = _get(client, f"/api/tasks/{parent_id}/children")["children"]
            for k in kids:
                if (
                    k["status"] == "processing"
                    and k["worker_id"] == "wa"
                    and k["progress"]["phase"] == "transcode"
                    and k["progress"]["percent"] >= 20
                ):
                    victim = k
        time.sleep(0.2)
    assert victim is not None, "no chunk ran on wa"
    os.killpg(workers["wa"].pid, signal.SIGKILL)
    workers["wa"].wait(10)
    print(f"\nFIGURE killed wa mid-chunk: {victim['id']} at {victim['progress']['percent']} %")

    done = _wait(client, parent_id, timeout=900)
    split_wall = time.monotonic() - started
    assert done["status"] == "completed", done
    assert waiting_reason and waiting_reason.startswith("waiting for its children"), waiting_reason
    summary = _get(client, f"/api/tasks/{parent_id}/children")
    kids = summary["children"]
    assert summary["total"] == len(kids) == done["children"] >= 10
    assert summary["by_status"] == {"completed": len(kids)} and summary["percent"] == 100
    chunks = [k for k in kids if k["params"].get("chunk")]
    assert [k for k in kids if k not in chunks] == [kids[0]]  # the audio part, first
    assert kids[0]["params"]["audio_part"] is True
    assert sum(k["params"]["chunk"]["frames"] for k in chunks) == FRAMES
    killed = next(k for k in kids if k["id"] == victim["id"])
    assert [a["outcome"] for a in killed["history"]][:1] == ["lease_expired"]
    assert killed["history"][-1]["outcome"] == "completed"
    # only what wa held was lost: every other chunk ran once
    for k in kids:
        expired = [a for a in k["history"] if a["outcome"] == "lease_expired"]
        assert all(a["worker_id"] == "wa" for a in expired), k["history"]
        if not expired:
            assert [a["outcome"] for a in k["history"]] == ["completed"], k["history"]

    show = subprocess.run(
        [sys.executable, "-m", "conveyor", "show", parent_id, "--url", server.url],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "CONVEYOR_CONFIG": str(server.data_dir / "no-config.yaml")},
    )
    assert f"children {len(kids)} ({len(kids)} completed)" in show.stdout, show.stdout + show.stderr

    (out,) = [o for o in done["outputs"] if o["name"] == "mp4_standard"]
    assert out["meta"]["chunks"] == len(chunks)
    stitched = _download(client, out, tmp_path / "stitched.mp4")
    assert frame_count(stitched) == FRAMES
    video = sorted(packet_times(stitched, "v:0"))
    assert all(b > a for a, b in itertools.pairwise(video)), "video timestamps repeat"
    assert video[-1] - video[0] == pytest.approx(SECONDS - 1 / FPS, abs=1e-3)
    audio = packet_times(stitched, "a:0")
    assert all(b > a for a, b in itertools.pairwise(audio)), "audio timestamps go back"
    assert silences(stitched) == [], "an audio gap in the stitched output"

    # the same profile, unsplit, on the same workers (one left)
    started = time.monotonic()
    whole_id = _submit(client, "clips/long.mp4", split=False)
    whole = _wait(client, whole_id, timeout=900)
    whole_wall = time.monotonic() - started
    assert whole["status"] == "completed" and whole["children"] == 0, whole
    (wout,) = [o for o in whole["outputs"] if o["name"] == "mp4_standard"]
    unsplit = _download(client, wout, tmp_path / "whole.mp4")
    w, h = out["meta"]["width"], out["meta"]["height"]
    assert (w, h) == (wout["meta"]["width"], wout["meta"]["height"])
    split_db = mean_psnr(stitched, long_clip, w, h)
    whole_db = mean_psnr(unsplit, long_clip, w, h)
    print(
        f"FIGURE {len(chunks)} chunks + audio part: split {split_db:.2f} dB vs unsplit "
        f"{whole_db:.2f} dB; "
        f"split by two workers (one killed) {split_wall:.1f} s, unsplit by one {whole_wall:.1f} s"
    )
    assert abs(split_db - whole_db) <= 0.5
