"""Split and stitch, the media half (issue 18): chunks cut on the source's keyframes,
encoded apart, joined by the concat demuxer with a stream copy and the audio encoded
once, must be the unsplit encode's equal: the same frames (count, order, no frame
twice: checked by PSNR against the source frame by frame), monotonic timestamps, no
audio gap, quality within 0.5 dB.  Real ffmpeg on a generated clip with B-frames."""

from __future__ import annotations

import itertools
import re
import subprocess
from pathlib import Path

import pytest

from conveyor.processors.transcode.command import build_command, plan_outputs
from conveyor.processors.transcode.encoders import detect_encoders
from conveyor.processors.transcode.probe import probe_input
from conveyor.processors.transcode.profiles import BUILTIN_PROFILES
from conveyor.processors.transcode.split import (
    FrameTimes,
    chunk_command,
    chunk_name,
    concat_list,
    parse_frame_times,
    plan_chunks,
    read_frame_times,
    stitch_command,
)
from tests.integration.transcode.conftest import make_clip

SECONDS = 24.0


def run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=600)


def frame_count(path: Path) -> int:
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_frames",
            "-of",
            "csv=p=0",
            str(path),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return int(out.strip().strip(","))


def packet_times(path: Path, stream: str) -> list[float]:
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            stream,
            "-show_entries",
            "packet=pts_time",
            "-of",
            "csv=p=0",
            str(path),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [float(x.strip(",")) for x in out.split() if x.strip(",") not in ("", "N/A")]


def psnr_frames(path: Path, source: Path, width: int, height: int) -> list[float]:
    """Per-frame PSNR of ``path`` against the source scaled to its size."""
    graph = f"[1:v]scale={width}:{height},setsar=1,format=yuv420p[r];[0:v][r]psnr=stats_file=-"
    out = subprocess.run(
        [
            "ffmpeg",
            "-hide_banner",
            "-nostdin",
            "-i",
            str(path),
            "-i",
            str(source),
            "-lavfi",
            graph,
            "-f",
            "null",
            "-",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [float(m) for m in re.findall(r"psnr_avg:([0-9.]+|inf)", out.replace("inf", "99"))]


def silences(path: Path) -> list[str]:
    err = subprocess.run(
        [
            "ffmpeg",
            "-hide_banner",
            "-nostdin",
            "-i",
            str(path),
            "-map",
            "0:a",
            "-af",
            "silencedetect=noise=-50dB:d=0.02",
            "-f",
            "null",
            "-",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stderr
    return re.findall(r"silence_start: ([0-9.]+)", err)


def test_plan_chunks_partitions_the_frames_on_keyframes() -> None:
    # 25 fps, a keyframe every 2 s, a B-frame order in the file (sorted by the parser)
    lines = []
    for n in range(250):
        lines.append(f"{n / 25:.6f},{'K_' if n % 50 == 0 else '__'}")
    lines = lines[1::2] + lines[::2] + ["N/A,__"]
    frames = parse_frame_times("\n".join(lines), 25.0)
    assert len(frames.times) == 250 and frames.keyframes == frozenset(range(0, 250, 50))
    chunks = plan_chunks(frames, 3.0)
    # cuts at the first keyframe >= 3 s after the previous cut: 4 s, 8 s; the rest (2 s)
    # is under MIN_CHUNK_S and stays with the last chunk
    assert [(c.first, c.frames) for c in chunks] == [(0, 100), (100, 150)]
    assert sum(c.frames for c in chunks) == 250
    assert all(c.first in frames.keyframes for c in chunks)
    assert chunks[-1].end == pytest.approx(10.0)
    one = plan_chunks(FrameTimes((0.0, 0.04), frozenset({0}), 0.04), 120)
    assert [(c.first, c.frames) for c in one] == [(0, 2)]
    with pytest.raises(ValueError, match="plain name"):
        concat_list(["../etc/passwd"])


def test_stitched_chunks_equal_the_unsplit_encode(tmp_path: Path) -> None:
    # 320x180: both profiles keep the input's size (never upscaled), and four encodes of
    # 600 frames (split and whole, two profiles) cost a quarter of what 640x360 did
    src = make_clip(
        tmp_path / "src.mp4",
        width=320,
        height=180,
        seconds=SECONDS,
        extra=["-g", "50", "-bf", "2", "-x264-params", "b-adapt=0:bframes=2"],
    )
    info = probe_input("ffprobe", src)
    encoders = detect_encoders("ffmpeg", "cpu")
    profiles = [BUILTIN_PROFILES["mp4_standard"], BUILTIN_PROFILES["mp4_smooth"]]
    work = tmp_path / "chunks"
    work.mkdir()
    plans = plan_outputs(info, profiles, tmp_path / "split", preview_seconds=30)
    (tmp_path / "split").mkdir()
    frames = read_frame_times("ffprobe", src, info)
    assert len(frames.times) == round(SECONDS * 25)
    chunks = plan_chunks(frames, 7.0)
    assert len(chunks) == 3, chunks
    assert sum(c.frames for c in chunks) == len(frames.times)
    for chunk in chunks:
        run(chunk_command("ffmpeg", src, info, chunk, frames.frame_s, plans, encoders, work))
        for plan in plans:
            part = work / chunk_name(chunk.index, plan.name)
            assert frame_count(part) == chunk.frames, (chunk, plan.name)
    whole_plans = plan_outputs(info, profiles, tmp_path / "whole", preview_seconds=30)
    (tmp_path / "whole").mkdir()
    run(build_command("ffmpeg", src, info, whole_plans, encoders))
    for plan, whole in zip(plans, whole_plans, strict=True):
        names = [chunk_name(c.index, plan.name) for c in chunks]
        listing = work / f"{plan.name}.txt"
        listing.write_text(concat_list(names))
        run(stitch_command("ffmpeg", listing, src, info, plan))
        out = plan.path
        assert frame_count(out) == len(frames.times)
        video = packet_times(out, "v:0")
        ordered = sorted(video)
        assert all(b > a for a, b in itertools.pairwise(ordered)), "timestamps repeat"
        assert ordered[-1] - ordered[0] == pytest.approx(SECONDS - 1 / 25, abs=1e-3)
        audio = packet_times(out, "a:0")
        assert all(b > a for a, b in itertools.pairwise(audio))
        assert silences(out) == [], "an audio gap in the stitched output"
        split_psnr = psnr_frames(out, src, plan.width, plan.height)
        whole_psnr = psnr_frames(whole.path, src, plan.width, plan.height)
        assert len(split_psnr) == len(whole_psnr) == len(frames.times)
        # a frame lost or doubled at a boundary shifts every frame after it: the worst
        # frame would fall far below the unsplit encode's worst
        assert min(split_psnr) > min(whole_psnr) - 3, (plan.name, min(split_psnr))
        mean_split = sum(split_psnr) / len(split_psnr)
        mean_whole = sum(whole_psnr) / len(whole_psnr)
        print(f"\nFIGURE {plan.name}: split {mean_split:.2f} dB, whole {mean_whole:.2f} dB")
        assert abs(mean_split - mean_whole) <= 0.5
