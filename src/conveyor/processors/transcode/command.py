"""The ffmpeg command, as a pure function of input facts and the profile table.

Seed 002 ran one ffmpeg per rendition, decoding the input seven times.  Here
one process decodes once and ``split`` feeds every rendition's scaler and
encoder, so the job is bound by the encoders, not by repeated decoding.
Nothing here touches the disk or spawns anything, so every rule (sizes,
never upscaling, mute outputs, preview length) is unit-testable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from conveyor.processors.transcode.encoders import NVDEC_CODECS, Encoders
from conveyor.processors.transcode.probe import MediaInfo, input_args
from conveyor.processors.transcode.profiles import Profile

# Quiet except for errors (kept for the failure message); progress as key=value on stdout.
_GLOBAL_ARGS: tuple[str, ...] = ("-hide_banner", "-nostdin", "-loglevel", "error", "-y")
_GLOBAL_ARGS += ("-progress", "pipe:1", "-nostats")


@dataclass(frozen=True)
class OutputPlan:
    """One rendition as it will be produced, and what its check should expect."""

    profile: Profile
    path: Path
    width: int
    height: int
    audio: bool
    # Where the output starts in the input and how long it should be (0 for stills).
    start: float
    duration: float

    @property
    def name(self) -> str:
        return self.profile.name


# An input whose aspect is this close to a box's is scaled to the box's very size: users
# were promised 848x480 for mp4_standard, not the 848x476 that 16:9 gives exactly.
SNAP_TOLERANCE = Fraction(1, 100)


def fit_within(src_w: int, src_h: int, max_w: int | None, max_h: int | None) -> tuple[int, int]:
    """Largest even size inside the box with the source's aspect, never above the source.

    When the source's aspect is within 1 % of the box's and the source is at least
    as large as the box both ways, the result is the box itself (made even): the
    named size, stretched by under 1 %, and still never an upscale.

    Computed exactly (fractions) rather than left to scale expressions, so
    the output check can demand the very size that was asked for.
    """
    if max_w is not None and max_h is not None and src_w >= max_w and src_h >= max_h:
        ratio = Fraction(src_w * max_h, src_h * max_w)
        if abs(ratio - 1) <= SNAP_TOLERANCE:
            return max(2, max_w // 2 * 2), max(2, max_h // 2 * 2)
    scale = Fraction(1)
    if max_w is not None and src_w > max_w:
        scale = min(scale, Fraction(max_w, src_w))
    if max_h is not None and src_h > max_h:
        scale = min(scale, Fraction(max_h, src_h))
    # Encoders with 4:2:0 chroma need even sizes; rounding down keeps us inside the box.
    w = max(2, math.floor(src_w * scale) // 2 * 2)
    h = max(2, math.floor(src_h * scale) // 2 * 2)
    return w, h


def preview_length(input_duration: float, preview_seconds: float) -> float:
    """At most ``preview_seconds`` and at most half the input, so a preview is always shorter."""
    return round(min(preview_seconds, input_duration / 2), 3)


def still_time(info: MediaInfo, frame_at: float) -> float:
    """The still's timestamp, kept a couple of frames before the end so a frame exists."""
    frame = 1 / info.fps if info.fps else 0.04
    return round(max(0.0, min(info.duration * frame_at, info.duration - 2 * frame)), 3)


def plan_outputs(
    info: MediaInfo,
    profiles: list[Profile],
    outdir: Path,
    preview_seconds: float,
) -> list[OutputPlan]:
    plans = []
    for p in profiles:
        w, h = fit_within(info.width, info.height, p.max_width, p.max_height)
        if p.is_still:
            start, duration = still_time(info, p.frame_at or 0.0), 0.0
        elif p.is_preview:
            length = preview_length(info.duration, p.preview_seconds or preview_seconds)
            start, duration = 0.0, length
        else:
            start, duration = 0.0, info.duration
        plans.append(
            OutputPlan(
                profile=p,
                path=outdir / f"{p.name}.{p.ext}",
                width=w,
                height=h,
                audio=p.audio and info.has_audio,
                start=start,
                duration=duration,
            )
        )
    return plans


def _video_chain(plan: OutputPlan) -> str:
    steps = []
    if plan.profile.is_still:
        # The second trim ends the branch after one frame, so split stops feeding it.
        steps += [f"trim=start={plan.start:.3f}", "setpts=PTS-STARTPTS", "trim=end_frame=1"]
    elif plan.profile.is_preview:
        steps += [f"trim=duration={plan.duration:.3f}", "setpts=PTS-STARTPTS"]
    steps += [
        f"scale={plan.width}:{plan.height}",
        "setsar=1",
        "format=yuvj420p" if plan.profile.is_still else "format=yuv420p",
    ]
    return ",".join(steps)


def filter_graph(info: MediaInfo, plans: list[OutputPlan]) -> str:
    """One decode, ``split`` into one branch per rendition; trimmed audio only for previews."""
    src = f"[0:{info.video_index}]"
    parts = []
    if len(plans) == 1:
        parts.append(f"{src}{_video_chain(plans[0])}[v0]")
    else:
        labels = "".join(f"[s{i}]" for i in range(len(plans)))
        parts.append(f"{src}split={len(plans)}{labels}")
        parts += [f"[s{i}]{_video_chain(p)}[v{i}]" for i, p in enumerate(plans)]
    for i, p in enumerate(plans):
        if p.audio and p.profile.is_preview:
            parts.append(
                f"[0:{info.audio_index}]atrim=duration={p.duration:.3f},asetpts=PTS-STARTPTS[a{i}]"
            )
    return ";".join(parts)


def _options(opts: dict[str, str]) -> list[str]:
    return [arg for k, v in opts.items() for arg in (f"-{k}", v)]


def video_encoder_args(profile: Profile, encoder: str) -> list[str]:
    """Encoder arguments for one rendition, per encoder family."""
    if profile.is_still:
        q = str(profile.jpeg_quality)
        return ["-c:v", encoder, "-q:v", q, "-frames:v", "1", "-update", "1"]
    vbv = []
    if profile.maxrate:
        vbv = ["-maxrate", profile.maxrate, "-bufsize", profile.bufsize or profile.maxrate]
    if encoder.endswith("_nvenc"):
        # NVENC: constant-quality VBR (-cq) capped by the same VBV as the CPU path.
        args = ["-c:v", encoder, "-preset", profile.nvenc_preset, "-tune", "hq", "-rc", "vbr"]
        args += ["-cq", str(profile.crf), "-b:v", "0", *vbv]
        args += _options(profile.extra_options) + _options(profile.nvenc_options)
    else:
        args = ["-c:v", encoder, "-preset", profile.preset, "-crf", str(profile.crf), *vbv]
        cpu = dict(profile.cpu_options)
        if encoder == "libx265":
            # x265 prints its own banner to stderr whatever ffmpeg's -loglevel says.
            user = cpu.pop("x265-params", "")
            cpu["x265-params"] = ":".join(x for x in ("log-level=error", user) if x)
        args += _options(profile.extra_options) + _options(cpu)
    if profile.codec == "h265" and profile.ext in ("mp4", "mov"):
        args += ["-tag:v", "hvc1"]  # Apple players refuse the default hev1 tag
    return args


def build_command(
    ffmpeg: str,
    input_path: Path,
    info: MediaInfo,
    plans: list[OutputPlan],
    encoders: Encoders,
) -> list[str]:
    """argv for the single ffmpeg process that writes every planned output."""
    if not plans:
        raise ValueError("no outputs planned")
    argv = [ffmpeg, *_GLOBAL_ARGS]
    if encoders.nvdec and info.video_codec in NVDEC_CODECS:
        argv += ["-hwaccel", "cuda"]  # frames come back to system memory for our filters
    # the file alone, read only with the container demuxer the probe found (no playlists)
    argv += input_args(input_path, info.demuxer)
    argv += ["-filter_complex", filter_graph(info, plans)]
    for i, plan in enumerate(plans):
        p = plan.profile
        argv += ["-map", f"[v{i}]"]
        if plan.audio:
            argv += ["-map", f"[a{i}]" if p.is_preview else f"0:{info.audio_index}"]
            argv += ["-c:a", "aac", "-b:a", p.audio_bitrate, "-ac", str(p.audio_channels)]
        else:
            argv += ["-an"]
        argv += ["-sn", "-dn"]
        argv += video_encoder_args(p, encoders.for_codec(p.codec))
        if p.ext in ("mp4", "mov"):
            argv += ["-movflags", "+faststart"]
        if not p.is_still:
            # slow encoders (x265 lookahead) hold packets back; let the muxer queue wait
            argv += ["-max_muxing_queue_size", "4096"]
        argv.append(str(plan.path))
    return argv
