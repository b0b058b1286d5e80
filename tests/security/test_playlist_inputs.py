"""Issue 13, finding 6: a playlist input must not read the worker's disk.

An uploaded ``.m3u8`` naming ``file:///…/secret.ts`` (or a bare absolute path,
or a path relative to the worker's temp folder) used to be transcoded: ffmpeg's
``hls`` demuxer opened the host file and the thumbnail showed it.  Against a
real ``conveyor up`` with auth on, each such playlist (whatever its name) now
fails as ``invalid_input`` on the first attempt and nothing is published,
while ordinary MP4, MOV, MKV and WebM uploads still transcode.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import FAST_ENV, Server, launch, need_tool


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, httpx.Client]]:
    need_tool("ffmpeg", "ffprobe")
    env = {**FAST_ENV, "CONVEYOR_AUTH": "on", "CONVEYOR_TRIGGER_ENABLED": "false"}
    srv = launch(tmp_path_factory.mktemp("playlists"), "up", env=env)
    try:
        m = re.search(r"\b(cvy_[0-9a-f]+_[A-Za-z0-9_-]{43})\b", srv.log_text())
        assert m, srv.log_text()
        admin = {"Authorization": f"Bearer {m.group(1)}"}
        r = httpx.post(
            f"{srv.url}/api/tokens", json={"name": "uploader", "role": "operator"}, headers=admin
        )
        assert r.status_code == 201, r.text
        client = httpx.Client(
            base_url=srv.url, headers={"Authorization": f"Bearer {r.json()['token']}"}, timeout=60
        )
        yield srv, client
        client.close()
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def host_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A video on the worker host's disk, in no bucket: what the attacker wants to see."""
    need_tool("ffmpeg")
    path = tmp_path_factory.mktemp("host") / "secret.ts"
    _ffmpeg("testsrc2=size=320x240:rate=25:duration=3", ["-c:v", "libx264"], path, "mpegts")
    return path


def _ffmpeg(source: str, codec: list[str], dest: Path, fmt: str | None = None) -> Path:
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y"]
    cmd += ["-f", "lavfi", "-i", source, *codec, "-pix_fmt", "yuv420p"]
    cmd += ["-f", fmt] if fmt else []
    subprocess.run([*cmd, str(dest)], check=True)
    return dest


def _transcode(client: httpx.Client, data: bytes, key: str, types: list[str]) -> dict[str, Any]:
    r = client.put(f"/api/files/input/{key}", content=data)
    assert r.status_code in (200, 201), r.text
    body = {"input_bucket": "input", "input_key": key, "transcode_types": types}
    r = client.post("/api/queue/add", json=body)
    assert r.status_code == 201, r.text
    task_id = r.json()["task_id"]
    deadline = time.monotonic() + 120
    task: dict[str, Any] = {}
    while time.monotonic() < deadline:
        task = client.get(f"/api/tasks/{task_id}").json()
        if task["status"] in ("completed", "failed", "cancelled") or task["attempts"] > 1:
            break
        time.sleep(0.2)
    return task


def _playlist(segment: str) -> bytes:
    return (
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:3\n#EXT-X-MEDIA-SEQUENCE:0\n"
        f"#EXTINF:3.0,\n{segment}\n#EXT-X-ENDLIST\n"
    ).encode()


@pytest.mark.parametrize(
    ("name", "form"),
    [
        ("file-url.m3u8", "file://{path}"),
        ("bare-path.m3u8", "{path}"),
        ("relative.m3u8", "{relative}"),
        ("disguised.mp4", "file://{path}"),  # the name does not matter, the bytes do
    ],
)
def test_playlist_naming_a_host_file_is_refused(
    up: tuple[Server, httpx.Client], host_clip: Path, name: str, form: str
) -> None:
    srv, client = up
    # relative to the worker's temp folder for the task (<data>/tmp/<task>/input.m3u8)
    relative = "../" * 12 + str(host_clip).lstrip("/")
    segment = form.format(path=host_clip, relative=relative)
    key = f"lists/{name}"
    task = _transcode(client, _playlist(segment), key, ["thumbnail", "mp4_smooth"])
    print(
        f"\n{name} -> {segment[:60]}: status={task.get('status')} "
        f"error_code={task.get('error_code')} attempts={task.get('attempts')} "
        f"outputs={[o['key'] for o in task.get('outputs', [])]} error={task.get('error')}"
    )
    assert task["status"] == "failed", task
    assert task["error_code"] == "invalid_input", task
    assert task["attempts"] == 1, task
    assert task["outputs"] == []
    stem = key.rsplit(".", 1)[0]
    out = srv.data_dir / "buckets" / "output" / stem
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())
    assert str(host_clip) not in (task.get("error") or ""), "no host paths in the error"


@pytest.mark.parametrize(
    ("name", "codec", "fmt"),
    [
        ("clip.mp4", ["-c:v", "libx264", "-preset", "ultrafast"], None),
        ("clip.mov", ["-c:v", "libx264", "-preset", "ultrafast"], None),
        ("clip.mkv", ["-c:v", "libx264", "-preset", "ultrafast"], None),
        ("clip.webm", ["-c:v", "libvpx", "-b:v", "300k"], None),
    ],
)
def test_ordinary_containers_still_transcode(
    up: tuple[Server, httpx.Client],
    tmp_path: Path,
    name: str,
    codec: list[str],
    fmt: str | None,
) -> None:
    _, client = up
    clip = _ffmpeg("testsrc2=size=320x240:rate=25:duration=2", codec, tmp_path / name, fmt)
    task = _transcode(client, clip.read_bytes(), f"media/{name}", ["thumbnail", "mp4_smooth"])
    print(f"\n{name}: status={task.get('status')} error={task.get('error')}")
    assert task["status"] == "completed", task
    names = sorted(o["name"] for o in task["outputs"])
    assert names == ["mp4_smooth", "thumbnail"], names
