"""Split and stitch: one long input encoded as chunks by several workers, then joined.

A two-hour film encoded by one worker takes hours however many workers are idle.
Cut into chunks, each chunk is an ordinary task any worker may claim, and a last
step joins the encoded chunks without encoding them again (the concat demuxer).
Three choices make the join invisible:

* **Chunks start on the source's keyframes and hold a counted number of frames.**
  A chunk decodes from just before its first frame (``-ss`` half a frame early, so
  a timestamp printed to six decimals can never fall after the keyframe it names)
  and stops after exactly its frames (``-frames:v``), with the timestamps made to
  start at zero and passed through as they are (no frame duplicated to fill the
  half frame).  The chunks partition the source's frames: none lost, none twice.
* **Every chunk starts with a keyframe of its own** (a new encoder per chunk), so the
  concat demuxer may join them with a stream copy.
* **Audio is encoded once, by the stitch, from the whole source**: no chunk carries
  audio, so there is no priming gap or overlap at a chunk boundary.

Nothing here touches storage or the queue: ``plan_chunks`` is a pure function of the
source's frame timestamps, and the argv builders are pure too; the processor runs
them.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from conveyor.errors import ProcessorError
from conveyor.processors.transcode.command import (
    _GLOBAL_ARGS,
    OutputPlan,
    video_encoder_args,
)
from conveyor.processors.transcode.encoders import Encoders
from conveyor.processors.transcode.probe import MediaInfo, input_args

# How long listing a long input's frame timestamps may take (no decoding: packets only).
FRAMES_PROBE_TIMEOUT_S = 600.0
# A chunk shorter than this is joined to its neighbour: a chunk costs a task, a
# process start and a decoder warm-up, which must stay small beside its encode.
MIN_CHUNK_S = 5.0
CHUNK_EXT = "mp4"


@dataclass(frozen=True)
class Chunk:
    """Frames ``first`` .. ``first + frames - 1`` of the source (in presentation order),
    starting at ``start`` seconds, which is a keyframe's timestamp."""

    index: int
    first: int
    frames: int
    start: float
    end: float  # the next chunk's start, or the end of the source's last frame

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class FrameTimes:
    """The source video stream's frame timestamps in presentation order, and which of
    them are keyframes (where a chunk may start)."""

    times: tuple[float, ...]
    keyframes: frozenset[int]  # indexes into ``times``
    frame_s: float  # one frame's duration (the last frame ends one frame after it starts)


def read_frame_times(ffprobe: str, path: Path, info: MediaInfo) -> FrameTimes:
    """The packets' timestamps of the input's video stream, sorted by presentation time
    (B-frames come out of order in the file).  No frame is decoded."""
    argv = [ffprobe, "-v", "error", "-select_streams", str(info.video_index)]
    argv += ["-show_entries", "packet=pts_time,flags", "-of", "csv=p=0"]
    argv += input_args(path, info.demuxer)
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=FRAMES_PROBE_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ProcessorError(
            f"listing the input's frames timed out after {FRAMES_PROBE_TIMEOUT_S:g} s",
            retryable=True,
        ) from exc
    if proc.returncode != 0:
        tail = " ".join(proc.stderr.split())[-300:]
        raise ProcessorError(f"could not list the input's frames: {tail}")
    return parse_frame_times(proc.stdout, info.fps)


def parse_frame_times(text: str, fps: float | None) -> FrameTimes:
    """``pts_time,flags`` lines (ffprobe's csv) to :class:`FrameTimes`; packets without a
    timestamp are left out (they are not shown frames)."""
    rows: list[tuple[float, bool]] = []
    for line in text.splitlines():
        pts, _, flags = line.strip().partition(",")
        if not pts or pts == "N/A":
            continue
        try:
            rows.append((float(pts), "K" in flags))
        except ValueError:
            continue
    rows.sort(key=lambda r: r[0])
    times = tuple(t for t, _ in rows)
    keys = frozenset(i for i, (_, k) in enumerate(rows) if k)
    if fps and fps > 0:
        frame_s = 1 / fps
    elif len(times) > 1:
        frame_s = (times[-1] - times[0]) / (len(times) - 1)
    else:
        frame_s = 0.04
    return FrameTimes(times, keys, frame_s)


def plan_chunks(frames: FrameTimes, chunk_seconds: float) -> list[Chunk]:
    """Cut at the first keyframe at or after each multiple of ``chunk_seconds`` from the
    previous cut; a last piece shorter than :data:`MIN_CHUNK_S` joins the chunk before.
    A source with keyframes far apart gives fewer, longer chunks, never a cut off a
    keyframe."""
    times = frames.times
    if not times:
        return []
    if chunk_seconds <= 0:
        raise ValueError("chunk_seconds must be positive")
    end_of_source = times[-1] + frames.frame_s
    starts = [0]
    for i in sorted(frames.keyframes):
        if i == 0:
            continue
        t = times[i]
        if t - times[starts[-1]] >= chunk_seconds and end_of_source - t >= MIN_CHUNK_S:
            starts.append(i)
    chunks = []
    for k, first in enumerate(starts):
        nxt = starts[k + 1] if k + 1 < len(starts) else len(times)
        end = times[nxt] if nxt < len(times) else end_of_source
        chunks.append(Chunk(k, first, nxt - first, times[first], end))
    return chunks


def chunk_name(index: int, profile: str) -> str:
    """The file one chunk's rendition of ``profile`` is written to (and stored as)."""
    return f"chunk-{index:05d}.{profile}.{CHUNK_EXT}"


def chunk_command(
    ffmpeg: str,
    input_path: Path,
    info: MediaInfo,
    chunk: Chunk,
    frame_s: float,
    plans: list[OutputPlan],
    encoders: Encoders,
    outdir: Path,
) -> list[str]:
    """One process: decode the chunk once, ``split`` it into every full-length video
    rendition (no audio), each encoder started fresh so the chunk opens on a keyframe."""
    if not plans:
        raise ValueError("no renditions to encode")
    argv = [ffmpeg, *_GLOBAL_ARGS]
    if chunk.first > 0:
        # half a frame early: the keyframe's own timestamp, printed with six decimals,
        # might round past it; frames before the keyframe are dropped by the exact seek
        argv += ["-ss", f"{max(0.0, chunk.start - frame_s / 2):.6f}"]
    argv += input_args(input_path, info.demuxer)
    chains = [f"scale={p.width}:{p.height},setsar=1,format=yuv420p" for p in plans]
    src = f"[0:{info.video_index}]setpts=PTS-STARTPTS"
    if len(chains) == 1:
        graph = f"{src},{chains[0]}[v0]"
    else:
        labels = "".join(f"[s{i}]" for i in range(len(chains)))
        graph = f"{src},split={len(chains)}{labels};" + ";".join(
            f"[s{i}]{c}[v{i}]" for i, c in enumerate(chains)
        )
    argv += ["-filter_complex", graph]
    for i, plan in enumerate(plans):
        argv += ["-map", f"[v{i}]", "-an", "-sn", "-dn"]
        argv += ["-frames:v", str(chunk.frames), "-fps_mode", "passthrough"]
        argv += video_encoder_args(plan.profile, encoders.for_codec(plan.profile.codec))
        argv += ["-max_muxing_queue_size", "4096"]
        argv.append(str(outdir / chunk_name(chunk.index, plan.name)))
    return argv


def concat_list(names: list[str]) -> str:
    """The concat demuxer's list: plain names in the list's own folder (``-safe 1``
    refuses anything else, so the list can only name files beside it)."""
    for name in names:
        if "/" in name or "'" in name or name.startswith("."):
            raise ValueError(f"chunk file name {name!r} is not a plain name")
    return "".join(f"file '{name}'\n" for name in names)


def audio_name(bitrate: str, channels: int) -> str:
    """The file the source's audio is encoded into once for the renditions that want
    ``bitrate`` and ``channels`` (and stored as, by the split's audio part)."""
    return f"audio-{bitrate}-{channels}ch.m4a"


def audio_command(
    ffmpeg: str, input_path: Path, info: MediaInfo, bitrate: str, channels: int, out: Path
) -> list[str]:
    """The source's whole audio track encoded once (AAC), for the stitch to copy: run as
    a part of its own beside the video chunks, it is off the stitch's critical path."""
    if info.audio_index is None:
        raise ValueError("the input has no audio")
    argv = [ffmpeg, *_GLOBAL_ARGS, *input_args(input_path, info.demuxer)]
    argv += ["-map", f"0:{info.audio_index}", "-vn", "-sn", "-dn"]
    argv += ["-c:a", "aac", "-b:a", bitrate, "-ac", str(channels)]
    return [*argv, str(out)]


def stitch_command(
    ffmpeg: str,
    list_path: Path,
    input_path: Path,
    info: MediaInfo,
    plan: OutputPlan,
    audio_path: Path | None = None,
) -> list[str]:
    """Join one rendition's chunks with a stream copy and add the source's audio: copied
    from ``audio_path`` (``audio_command``'s file) when given, else encoded once here."""
    argv = [ffmpeg, *_GLOBAL_ARGS]
    argv += ["-protocol_whitelist", "file", "-f", "concat", "-safe", "1", "-i", f"file:{list_path}"]
    audio = plan.audio and info.audio_index is not None
    if audio and audio_path is not None:
        argv += ["-f", "mov", "-i", f"file:{audio_path}"]
    elif audio:
        argv += input_args(input_path, info.demuxer)
    argv += ["-map", "0:v:0", "-c:v", "copy"]
    if plan.profile.codec == "h265" and plan.profile.ext in ("mp4", "mov"):
        argv += ["-tag:v", "hvc1"]
    if audio and audio_path is not None:
        argv += ["-map", "1:a:0", "-c:a", "copy"]
    elif audio:
        p = plan.profile
        argv += ["-map", f"1:{info.audio_index}"]
        argv += ["-c:a", "aac", "-b:a", p.audio_bitrate, "-ac", str(p.audio_channels)]
    else:
        argv += ["-an"]
    argv += ["-sn", "-dn"]
    if plan.profile.ext in ("mp4", "mov"):
        argv += ["-movflags", "+faststart"]
    argv += ["-max_muxing_queue_size", "4096"]
    return [*argv, str(plan.path)]
