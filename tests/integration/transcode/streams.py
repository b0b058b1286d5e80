"""Checks of a published streaming group, from the outside: ffprobe and the playlists as a
player reads them (not Conveyor's own parsers).  Shared by the integration test and
tests/e2e/test_streaming_e2e.py."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def ffprobe(path: Path, *args: str) -> dict[str, Any]:
    """ffprobe JSON of a file, a playlist or a manifest (segments read as local files)."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-protocol_whitelist", "file", "-of", "json", *args,
         f"file:{path}"],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout  # fmt: skip
    return dict(json.loads(out))


def streams(path: Path) -> list[dict[str, Any]]:
    return list(ffprobe(path, "-show_streams")["streams"])


def duration(path: Path) -> float:
    return float(ffprobe(path, "-show_format")["format"]["duration"])


def keyframes(path: Path, stream: str = "v:0") -> list[float]:
    """The timestamps of the keyframes of one video stream (only keyframes decoded)."""
    data = ffprobe(
        path,
        "-skip_frame", "nokey", "-select_streams", stream,
        "-show_entries", "frame=pts_time,best_effort_timestamp_time,key_frame",
    )  # fmt: skip
    times = []
    for f in data.get("frames", []):
        t = f.get("pts_time", f.get("best_effort_timestamp_time"))
        if int(f.get("key_frame", 0)) and t not in (None, "N/A"):
            times.append(round(float(t), 3))
    return times


@dataclass
class Variant:
    uri: str
    attrs: dict[str, str]


def master_variants(master: Path) -> tuple[list[Variant], list[str]]:
    """``(#EXT-X-STREAM-INF variants, #EXT-X-MEDIA URIs)`` of a master playlist."""
    variants, media, pending = [], [], None
    for line in master.read_text().splitlines():
        if line.startswith("#EXT-X-STREAM-INF:"):
            pending = dict(re.findall(r'([A-Z-]+)=("[^"]*"|[^,]*)', line.split(":", 1)[1]))
        elif line.startswith("#EXT-X-MEDIA:"):
            media += re.findall(r'URI="([^"]+)"', line)
        elif line and not line.startswith("#") and pending is not None:
            variants.append(Variant(line, {k: v.strip('"') for k, v in pending.items()}))
            pending = None
    return variants, media


def extinf(playlist: Path) -> list[float]:
    return [float(m) for m in re.findall(r"#EXTINF:([0-9.]+)", playlist.read_text())]


def referenced(playlist: Path) -> list[str]:
    text = playlist.read_text()
    names = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    return names + re.findall(r'#EXT-X-MAP:URI="([^"]+)"', text)


def mpd_segment_durations(manifest: Path) -> dict[str, list[float]]:
    """Each representation's segment durations from its SegmentTimeline."""
    text = manifest.read_text()
    out: dict[str, list[float]] = {}
    for rep in re.finditer(r'<Representation id="(\d+)"(.*?)</Representation>', text, re.S):
        body = rep.group(2)
        timescale = int(re.search(r'timescale="(\d+)"', body).group(1))  # type: ignore[union-attr]
        durations = []
        for s in re.finditer(r"<S ([^>]*)/>", body):
            attrs = dict(re.findall(r'(\w+)="(\d+)"', s.group(1)))
            durations += [int(attrs["d"]) / timescale] * (1 + int(attrs.get("r", "0")))
        out[rep.group(1)] = durations
    return out


def mpd_durations(manifest: Path) -> dict[str, float]:
    """Each representation's length: the sum of its timeline (ffprobe's DASH demuxer
    reads the manifest's duration in whole seconds, so it cannot tell)."""
    return {rep: sum(d) for rep, d in mpd_segment_durations(manifest).items()}


def mpd_sizes(manifest: Path) -> list[tuple[int, int]]:
    return [
        (int(w), int(h))
        for w, h in re.findall(
            r'<Representation [^>]*width="(\d+)" height="(\d+)"', manifest.read_text()
        )
    ]


def relative(times: list[float]) -> list[float]:
    """Keyframe times from the stream's first (muxers start MPEG-TS at 1.4 s, fMP4 at 0)."""
    return [round(t - times[0], 3) for t in times] if times else []
