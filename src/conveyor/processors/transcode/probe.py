"""ffprobe on both ends: reject bad inputs early, trust no output unchecked.

Inputs are probed before any encoder starts so that a text file named
``.mp4`` fails in a second with a reason a person understands, instead of
burning retries.  Outputs are probed before anything is published, so a task
never completes with a rendition that is missing, the wrong codec, the wrong
size, or cut short by a damaged input.

Only real media containers are opened, and only the task's own file: ffprobe
and ffmpeg run with ``-protocol_whitelist file`` and a ``-format_whitelist``
of container demuxers, and ffmpeg is told the demuxer ffprobe found (``-f``).
A playlist (``hls``, ``concat``, ``dash``), an image sequence or any other
format that names further files is refused before it is read, so an uploaded
``.m3u8`` listing ``file:///etc/...`` or a host path cannot reach the
worker's disk.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from conveyor.errors import InputRejected, ProcessorError
from conveyor.processors.transcode.profiles import Profile
from conveyor.processors.transcode.runner import tidy_lines

PROBE_TIMEOUT_S = 60.0
# The demuxers an input may be read with: containers of audio/video that hold their
# own data.  Each name is ffmpeg's (its first name where it has several: ``mov`` is
# mov,mp4,m4a,3gp,3g2,mj2 and ``matroska`` is matroska,webm).  Nothing that opens
# other files or URLs is here: hls, dash, concat, image2 sequences, tee, lavfi.
MEDIA_DEMUXERS: tuple[str, ...] = (
    "mov",
    "matroska",
    "avi",
    "asf",
    "flv",
    "mpegts",
    "mpeg",
    "mpegvideo",
    "m4v",
    "h264",
    "hevc",
    "ogg",
    "mxf",
    "dv",
    "nut",
    "ivf",
    "yuv4mpegpipe",
    "gif",
)
# Demuxers whose input names other files: refused with words saying so.
_PLAYLIST_DEMUXERS = ("hls", "dash", "concat", "webm_dash_manifest")
_NOT_ALLOWED = re.compile(r"\[([\w,]+) @ 0x[0-9a-f]+\] Format not on whitelist")
# Demuxers that read single still images: a renamed JPEG "plays" for one frame.
_STILL_FORMATS = ("image2", "png_pipe", "jpeg_pipe", "webp_pipe", "gif_pipe", "bmp_pipe")
_STILL_CODECS = ("mjpeg", "png", "bmp", "webp", "tiff", "gif")
# ffprobe reports these codec names for our output codec families.
CODEC_NAMES = {"h264": "h264", "h265": "hevc", "jpeg": "mjpeg"}
# A full-length output shorter than this share of the input means the input
# decoded only partly (truncated upload, damaged middle).
MIN_FULL_DURATION_RATIO = 0.9


@dataclass(frozen=True)
class MediaInfo:
    """What the command builder needs to know about an input."""

    duration: float  # of the video stream where known, else of the container
    # Display size: storage size corrected for non-square pixels and rotation,
    # i.e. what ffmpeg hands the filter graph after autorotation.
    width: int
    height: int
    video_index: int
    video_codec: str
    fps: float | None
    audio_index: int | None
    audio_codec: str | None
    format_name: str

    @property
    def has_audio(self) -> bool:
        return self.audio_index is not None

    @property
    def demuxer(self) -> str:
        """The demuxer ffmpeg must read the input with (``-f``), from the allow-list."""
        return allowed_demuxer(self.format_name)


@dataclass(frozen=True)
class OutputInfo:
    codec: str
    width: int
    height: int
    duration: float | None
    audio_codec: str | None
    size: int


def allowed_demuxer(format_name: str) -> str:
    """``format_name`` as ffprobe reports it (``mov,mp4,m4a,3gp,3g2,mj2``) to the demuxer
    name to force, or InputRejected when it is not a media container on the allow-list."""
    name = format_name.split(",")[0].strip()
    if name not in MEDIA_DEMUXERS:
        raise InputRejected(_refusal(name))
    return name


def _refusal(name: str) -> str:
    if name in _PLAYLIST_DEMUXERS:
        return (
            f"input is a playlist or file list ({name}), not a video file: inputs that name "
            "other files or URLs are refused; upload the media file itself"
        )
    if name.endswith("_pipe") or name in _STILL_FORMATS:
        return f"input is a still image ({name}), not a video"
    return (
        f"input format {name or 'unknown'} is not an accepted video container "
        f"(accepted: {', '.join(MEDIA_DEMUXERS)})"
    )


def input_args(path: Path, demuxer: str | None = None) -> list[str]:
    """How ffprobe and ffmpeg are pointed at an input: the file protocol only, the
    container demuxers only (or exactly ``demuxer``), and a ``file:`` URL so no part
    of the name is read as a protocol."""
    formats = demuxer or ",".join(MEDIA_DEMUXERS)
    args = ["-protocol_whitelist", "file", "-format_whitelist", formats]
    if demuxer:
        args += ["-f", demuxer]
    return [*args, "-i", f"file:{path}"]


def run_ffprobe(ffprobe: str, path: Path, *, trusted: bool = False) -> dict[str, Any]:
    """Raw ffprobe JSON; ffprobe's own error line is kept for the message.

    An input (``trusted=False``) is opened only as one of ``MEDIA_DEMUXERS``; our own
    outputs (a JPEG thumbnail too) with any demuxer, but still through the file
    protocol alone."""
    argv = [ffprobe, "-v", "error", "-show_format", "-show_streams", "-of", "json"]
    if trusted:
        argv += ["-protocol_whitelist", "file", f"file:{path}"]
    else:
        argv += input_args(path)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except FileNotFoundError as exc:
        raise ProcessorError(f"ffprobe not found at {ffprobe!r}", retryable=True) from exc
    except subprocess.TimeoutExpired as exc:
        raise ProcessorError(
            f"ffprobe timed out after {PROBE_TIMEOUT_S:g} s", retryable=True
        ) from exc
    if proc.returncode != 0:
        refused = _NOT_ALLOWED.search(proc.stderr)
        if refused:
            raise InputRejected(_refusal(refused.group(1).split(",")[0]))
        reason = tidy_lines(proc.stderr.splitlines(), str(path)) or "ffprobe could not read it"
        raise InputRejected(f"input is not a readable video: {reason}")
    try:
        data = json.loads(proc.stdout or "{}")
    except json.JSONDecodeError as exc:
        raise InputRejected(
            f"input is not a readable video: ffprobe output unreadable: {exc}"
        ) from exc
    if not isinstance(data, dict):
        raise InputRejected("input is not a readable video: ffprobe returned no information")
    return data


def _float(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if f == f and f not in (float("inf"), float("-inf")) else None


def _ratio(value: Any) -> Fraction | None:
    try:
        num, den = (int(x) for x in str(value).replace(":", "/").split("/"))
    except ValueError:
        return None
    if num <= 0 or den <= 0:
        return None
    return Fraction(num, den)


def _rotation(stream: dict[str, Any]) -> int:
    for side in stream.get("side_data_list") or []:
        if "rotation" in side:
            return round(_float(side["rotation"]) or 0) % 360
    return round(_float((stream.get("tags") or {}).get("rotate")) or 0) % 360


def display_size(stream: dict[str, Any]) -> tuple[int, int]:
    """The picture as it is meant to be seen: SAR applied, rotation applied."""
    w, h = int(stream.get("width") or 0), int(stream.get("height") or 0)
    sar = _ratio(stream.get("sample_aspect_ratio")) or Fraction(1)
    if sar != 1:
        w = round(w * sar)
    if _rotation(stream) in (90, 270):
        w, h = h, w
    return w, h


def parse_media_info(data: dict[str, Any]) -> MediaInfo:
    """Turn ffprobe JSON into ``MediaInfo`` or say why this is not a usable video."""
    fmt = data.get("format") or {}
    streams: list[dict[str, Any]] = list(data.get("streams") or [])
    format_name = str(fmt.get("format_name") or "")
    videos = [
        s
        for s in streams
        if s.get("codec_type") == "video" and not (s.get("disposition") or {}).get("attached_pic")
    ]
    if not videos:
        kinds = sorted({str(s.get("codec_type")) for s in streams}) or ["none"]
        raise InputRejected(
            f"input has no video stream (found streams: {', '.join(kinds)}; format {format_name})"
        )
    video = videos[0]
    if format_name in _STILL_FORMATS or (
        video.get("codec_name") in _STILL_CODECS and format_name.endswith("_pipe")
    ):
        raise InputRejected(f"input is a still image ({format_name}), not a video")
    allowed_demuxer(format_name)
    width, height = display_size(video)
    if width <= 0 or height <= 0:
        raise InputRejected("input video stream has no picture size (damaged header?)")
    # The video's own duration when the container gives one: a long audio track must not
    # make a complete silent rendition look truncated, nor a preview outlast the picture.
    duration = _float(video.get("duration")) or _float(fmt.get("duration"))
    if not duration or duration <= 0:
        raise InputRejected("input has zero or unknown duration; nothing to transcode")
    audios = [s for s in streams if s.get("codec_type") == "audio"]
    fps_ratio = _ratio(video.get("avg_frame_rate")) or _ratio(video.get("r_frame_rate"))
    return MediaInfo(
        duration=duration,
        width=width,
        height=height,
        video_index=int(video.get("index", 0)),
        video_codec=str(video.get("codec_name") or "unknown"),
        fps=float(fps_ratio) if fps_ratio else None,
        audio_index=int(audios[0].get("index", 0)) if audios else None,
        audio_codec=str(audios[0].get("codec_name") or "unknown") if audios else None,
        format_name=format_name,
    )


def probe_input(ffprobe: str, path: Path) -> MediaInfo:
    if not path.is_file() or path.stat().st_size == 0:
        raise InputRejected("input is not a readable video: the file is empty")
    return parse_media_info(run_ffprobe(ffprobe, path))


def probe_output(ffprobe: str, path: Path) -> OutputInfo:
    """Facts about a produced file; any failure here is ours, not the input's."""
    if not path.is_file() or path.stat().st_size == 0:
        raise ProcessorError(f"ffmpeg produced no {path.name}", retryable=True)
    try:
        data = run_ffprobe(ffprobe, path, trusted=True)
    except InputRejected as exc:
        raise ProcessorError(f"{path.name} is unreadable: {exc.message}", retryable=True) from exc
    streams = list(data.get("streams") or [])
    videos = [s for s in streams if s.get("codec_type") == "video"]
    audios = [s for s in streams if s.get("codec_type") == "audio"]
    if len(videos) != 1:
        raise ProcessorError(f"{path.name} has {len(videos)} video streams", retryable=False)
    v = videos[0]
    fmt = data.get("format") or {}
    audio_codec: str | None = None
    if len(audios) == 1:
        audio_codec = str(audios[0].get("codec_name"))
    elif audios:
        audio_codec = f"{len(audios)} audio tracks"
    return OutputInfo(
        codec=str(v.get("codec_name")),
        width=int(v.get("width") or 0),
        height=int(v.get("height") or 0),
        duration=_float(fmt.get("duration")) or _float(v.get("duration")),
        audio_codec=audio_codec,
        size=path.stat().st_size,
    )


def verify_output(
    ffprobe: str,
    path: Path,
    profile: Profile,
    *,
    width: int,
    height: int,
    expect_audio: bool,
    expected_duration: float,
    input_duration: float,
) -> OutputInfo:
    """Check one rendition against its plan; raise with the first thing that is wrong.

    A full-length rendition that comes out short is blamed on the input (a
    truncated or damaged file decodes partly and ffmpeg still exits 0), so it
    is rejected without retry.  Anything else wrong is an encoder problem.
    """
    info = probe_output(ffprobe, path)
    name = profile.name
    want_codec = CODEC_NAMES[profile.codec]
    if info.codec != want_codec:
        raise ProcessorError(
            f"{name}: codec is {info.codec}, expected {want_codec}", retryable=False
        )
    if (info.width, info.height) != (width, height):
        raise ProcessorError(
            f"{name}: picture is {info.width}x{info.height}, expected {width}x{height}",
            retryable=False,
        )
    if profile.is_still:
        with open(path, "rb") as fh:
            if fh.read(3) != b"\xff\xd8\xff":
                raise ProcessorError(f"{name}: output is not a JPEG file", retryable=False)
        return info
    if expect_audio and info.audio_codec != "aac":
        raise ProcessorError(
            f"{name}: expected one AAC audio track, got {info.audio_codec}", retryable=False
        )
    if not expect_audio and info.audio_codec is not None:
        raise ProcessorError(
            f"{name}: expected no audio, found {info.audio_codec}", retryable=False
        )
    got = info.duration or 0.0
    if profile.is_preview:
        if got <= 0 or got >= input_duration or got > expected_duration + 1.0:
            raise ProcessorError(
                f"{name}: preview is {got:.2f} s long, expected about {expected_duration:.2f} s "
                f"(input {input_duration:.2f} s)",
                retryable=False,
            )
    elif got < expected_duration * MIN_FULL_DURATION_RATIO:
        raise InputRejected(
            f"input video looks truncated or damaged: {name} decoded only {got:.2f} s "
            f"of the {expected_duration:.2f} s the input declares"
        )
    return info
