"""End to end, issue 18's first show-point: a real `conveyor up`, a generated 60 s 1280x720
clip with audio, one task asking for the `hls` and `dash` groups, every file fetched back
through the API and checked from the outside with ffprobe:

* ffprobe opens master.m3u8, manifest.mpd and every variant (each HLS playlist, each DASH
  representation);
* no rung is larger than the input: 1080p is dropped, 720p kept at 1280x720, and the
  master playlist and the manifest list exactly what is there;
* every variant's keyframes fall at the same timestamps (every 4 s);
* every segment lasts at most the target plus one frame;
* every variant lasts the input's length within one frame.

The groups run with the built-in ladders, segment length and muxers, at x264 preset
``veryfast`` (set through ``CONVEYOR_TRANSCODE_PROFILES``, which also shows a config
override of a built-in group reaching a real server) so two shared cores finish in
about a minute.

Not here yet: the console's task page playing the HLS output in Chromium (the player
comes with the console work, in files this test does not own); that part of
show-point 1 is to be added to tests/e2e/test_console*.py with the player.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FAST_ENV, Server, launch, make_clip, need_tool, wait_task
from tests.integration.transcode import streams as st

SEG = 4.0
FPS = 25
FRAME = 1 / FPS
SECONDS = 60.0
FAST_GROUPS = {"hls": {"preset": "veryfast"}, "dash": {"preset": "veryfast"}}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    need_tool("ffmpeg", "ffprobe")
    env = {**FAST_ENV, "CONVEYOR_TRANSCODE_PROFILES": json.dumps(FAST_GROUPS)}
    srv = launch(tmp_path, "up", env=env)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def clip_60s(clips_dir: Path) -> Path:
    return make_clip(clips_dir / "talk60.mp4", width=1280, height=720, seconds=SECONDS, rate=FPS)


def fetch(server: Server, outputs: list[dict[str, Any]], dest: Path) -> dict[str, str]:
    """Every output through the API's download path into ``dest/<key>``; the content
    type each was served with."""
    served = {}
    with server.client as c:
        for o in outputs:
            r = c.get(f"/api/files/{o['bucket']}/{o['key']}")
            assert r.status_code == 200, (o["key"], r.text)
            path = dest / o["key"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(r.content)
            assert path.stat().st_size == o["size"], o["key"]
            served[o["key"]] = r.headers.get("content-type", "")
    return served


@pytest.mark.timeout(900)
def test_hls_and_dash_ladders_from_a_60s_720p_clip(
    server: Server, clip_60s: Path, tmp_path: Path
) -> None:
    source = st.duration(clip_60s)
    c = server.client
    r = c.put("/api/files/input/streams/talk.mp4", content=clip_60s.read_bytes())
    assert r.status_code == 201, r.text
    started = time.monotonic()
    r = c.post(
        "/api/queue/add",
        json={"input_key": "streams/talk.mp4", "transcode_types": ["hls", "dash"]},
    )
    assert r.status_code == 201, r.text
    task = wait_task(c, r.json()["task_id"], timeout=840)
    elapsed = time.monotonic() - started
    assert task["status"] == "completed", task
    assert task["attempts"] == 1
    outputs: list[dict[str, Any]] = task["outputs"]
    by_name = {o["name"]: o for o in outputs}
    assert all(o["key"].startswith(("streams/talk/hls/", "streams/talk/dash/")) for o in outputs)
    # what the task says it published, per file: the content types (what the API serves
    # them with is the faces' part, printed below)
    declared: dict[str, set[str]] = {Path(o["key"]).suffix: set() for o in outputs}
    for o in outputs:
        declared[Path(o["key"]).suffix].add(o["content_type"])
    assert declared[".m3u8"] == {"application/vnd.apple.mpegurl"}
    assert declared[".mpd"] == {"application/dash+xml"}
    assert declared[".ts"] == {"video/mp2t"}
    assert declared[".m4s"] == {"video/mp4", "video/iso.segment"}  # init, media

    root = tmp_path / "fetched"
    served = fetch(server, outputs, root)
    talk = root / "streams" / "talk"
    hls, dash = talk / "hls", talk / "dash"

    # -- what is there: 1080p is above the input, everything else is, and nothing larger
    planned = [(1280, 720), (960, 540), (640, 360), (416, 234)]
    for entry in ("hls/master.m3u8", "dash/manifest.mpd"):
        meta = by_name[entry]["meta"]
        assert meta["dropped"] == ["1080p"], meta
        assert [r["name"] for r in meta["renditions"]] == ["720p", "540p", "360p", "234p", "audio"]
    variants, media = st.master_variants(hls / "master.m3u8")
    assert [v.attrs["RESOLUTION"] for v in variants] == [f"{w}x{h}" for w, h in planned]
    assert media == ["audio/index.m3u8"]
    assert st.mpd_sizes(dash / "manifest.mpd") == planned

    # -- ffprobe opens the entry points and every variant
    master_streams = st.streams(hls / "master.m3u8")
    manifest_streams = st.streams(dash / "manifest.mpd")
    for found in (master_streams, manifest_streams):
        pictures = {(s["width"], s["height"]) for s in found if s["codec_type"] == "video"}
        assert pictures == set(planned), pictures
        assert all(w <= 1280 and h <= 720 for w, h in pictures), "no rung above the input"
        assert {s["codec_name"] for s in found if s["codec_type"] == "audio"} == {"aac"}
    playlists = [hls / v.uri for v in variants] + [hls / "audio" / "index.m3u8"]
    for playlist, want in zip(playlists, [*planned, None], strict=True):
        (s,) = st.streams(playlist)
        if want is None:
            assert s["codec_name"] == "aac"
        else:
            assert (s["codec_name"], s["width"], s["height"]) == ("h264", *want), playlist

    # -- keyframes: the same instants on every rung of both groups, one per segment
    every_segment = [round(SEG * i, 3) for i in range(int(SECONDS // SEG))]
    hls_keys = [st.keyframes(p) for p in playlists[:-1]]
    assert all(k == hls_keys[0] for k in hls_keys), "HLS variants' keyframes differ"
    dash_keys = [st.keyframes(dash / "manifest.mpd", f"v:{k}") for k in range(len(planned))]
    assert all(k == dash_keys[0] for k in dash_keys), "DASH representations' keyframes differ"
    assert st.relative(hls_keys[0]) == every_segment == st.relative(dash_keys[0])

    # -- segment lengths: at most the target plus one frame, audio included
    longest = {p.relative_to(hls).as_posix(): max(st.extinf(p)) for p in playlists}
    rep_durations = st.mpd_segment_durations(dash / "manifest.mpd")
    longest |= {f"dash rep {rep}": max(d) for rep, d in rep_durations.items()}
    assert max(longest.values()) <= SEG + FRAME + 1e-6, longest
    assert by_name["hls/master.m3u8"]["meta"]["longest_segment"] <= SEG + FRAME

    # -- lengths: every variant the input's, within one frame
    lengths = {p.relative_to(hls).as_posix(): st.duration(p) for p in playlists}
    lengths["master.m3u8"] = st.duration(hls / "master.m3u8")
    lengths |= {f"dash rep {rep}": v for rep, v in st.mpd_durations(dash / "manifest.mpd").items()}
    off = {k: round(abs(v - source), 4) for k, v in lengths.items()}
    assert max(off.values()) <= FRAME, off

    counts = {g: sum(1 for o in outputs if o["name"].startswith(f"{g}/")) for g in ("hls", "dash")}
    print(
        f"\nstreaming e2e: {source:.3f} s 1280x720 in, task completed in {elapsed:.1f} s; "
        f"files hls={counts['hls']} dash={counts['dash']}; rungs "
        f"{', '.join(f'{w}x{h}' for w, h in planned)} + AAC (1080p dropped)\n"
        f"  keyframes every {SEG:g} s on all {len(hls_keys) + len(dash_keys)} video variants "
        f"({len(hls_keys[0])} each); longest segment {max(longest.values()):.4f} s "
        f"(limit {SEG + FRAME:.2f}); largest length error {max(off.values()):.4f} s "
        f"(limit {FRAME:.2f})\n"
        f"  served by the API as: "
        + ", ".join(sorted({f"{Path(k).suffix}={v}" for k, v in served.items()}))
    )
