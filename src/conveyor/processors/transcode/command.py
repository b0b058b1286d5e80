"""The ffmpeg command, as a pure function of input facts and the profile table.

The transcoding service ran one ffmpeg per rendition, decoding the input seven
times.  Here
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
from conveyor.processors.transcode.profiles import AUDIO_RENDITION, Profile, Rung, StreamGroup

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


# -- adaptive-streaming groups -----------------------------------------------------------
# A frame rate to size the GOP by when the input does not say (keyframes are still forced
# by time, so they stay aligned; only the encoder's own GOP limit uses this).
DEFAULT_FPS = 25.0


@dataclass(frozen=True)
class RungPlan:
    """One rung as it will be encoded: its size, and the rung as an encoder profile."""

    rung: Rung
    profile: Profile
    width: int
    height: int

    @property
    def name(self) -> str:
        return self.rung.name


@dataclass(frozen=True)
class GroupPlan:
    """One streaming group as it will be produced, and what its check should expect."""

    group: StreamGroup
    dir: Path
    rungs: tuple[RungPlan, ...]
    # rungs left out because they would be no smaller than a lower rung (above the input)
    dropped: tuple[str, ...]
    audio: bool
    segment_seconds: float
    gop: int  # frames between keyframes
    frame_s: float  # one frame, for the segment-length checks
    duration: float

    @property
    def name(self) -> str:
        return self.group.name

    @property
    def entry_points(self) -> tuple[Path, ...]:
        return tuple(self.dir / e for e in self.group.entry_points)


def ladder_sizes(
    src_w: int, src_h: int, ladder: tuple[Rung, ...]
) -> tuple[list[tuple[Rung, int, int]], list[str]]:
    """Each rung's picture size for this input, and the names of the rungs dropped.

    Rungs that would give the same picture collapse to the one with the smallest box:
    every rung whose box holds the whole input would give the input's own size, so
    only the smallest of them stays (with its bitrate) and the ones above it go.
    Nothing is upscaled, and no two rungs are the same picture.
    """
    sized = [(r, *fit_within(src_w, src_h, r.max_width, r.max_height)) for r in ladder]
    best: dict[tuple[int, int], int] = {}
    for i, (r, w, h) in enumerate(sized):
        j = best.get((w, h))
        if j is None or r.box_area() < sized[j][0].box_area():
            best[(w, h)] = i
    keep = set(best.values())
    kept = [sized[i] for i in range(len(sized)) if i in keep]
    dropped = [sized[i][0].name for i in range(len(sized)) if i not in keep]
    return kept, dropped


def gop_frames(fps: float | None, segment_seconds: float) -> int:
    """Frames per GOP: a segment's worth, rounded up so that the encoder's own keyframe
    limit never comes before a forced keyframe (29.97 fps x 4 s is 120, not 119)."""
    return max(1, math.ceil((fps or DEFAULT_FPS) * segment_seconds - 1e-6))


def plan_groups(
    info: MediaInfo,
    groups: list[StreamGroup],
    outdir: Path,
    segment_seconds: float | None = None,
) -> list[GroupPlan]:
    """Each group's rungs for this input (see ``ladder_sizes``), GOP and folder;
    ``segment_seconds`` (a task's own) overrides every group's."""
    plans = []
    for g in groups:
        seg = float(segment_seconds or g.segment_seconds)
        kept, dropped = ladder_sizes(info.width, info.height, g.ladder)
        rungs = tuple(RungPlan(r, r.as_profile(g), w, h) for r, w, h in kept)
        plans.append(
            GroupPlan(
                group=g,
                dir=outdir / g.name,
                rungs=rungs,
                dropped=tuple(dropped),
                audio=g.audio and info.has_audio,
                segment_seconds=seg,
                gop=gop_frames(info.fps, seg),
                frame_s=1 / (info.fps or DEFAULT_FPS),
                duration=info.duration,
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


def _rung_chain(rung: RungPlan) -> str:
    return f"scale={rung.width}:{rung.height},setsar=1,format=yuv420p"


def filter_graph(
    info: MediaInfo, plans: list[OutputPlan], groups: list[GroupPlan] | tuple[()] = ()
) -> str:
    """One decode, ``split`` into one branch per rendition and per rung of every group
    (``[v<i>]``: the renditions first, then the groups' rungs in order); trimmed audio
    only for previews (groups map the input's audio as it is)."""
    src = f"[0:{info.video_index}]"
    chains = [_video_chain(p) for p in plans]
    chains += [_rung_chain(r) for g in groups for r in g.rungs]
    parts = []
    if len(chains) == 1:
        parts.append(f"{src}{chains[0]}[v0]")
    else:
        labels = "".join(f"[s{i}]" for i in range(len(chains)))
        parts.append(f"{src}split={len(chains)}{labels}")
        parts += [f"[s{i}]{chain}[v{i}]" for i, chain in enumerate(chains)]
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


def per_stream(args: list[str], index: int) -> list[str]:
    """Encoder arguments (option/value pairs) for one video stream of a multi-stream
    output: ``-crf 23`` → ``-crf:v:1 23``, ``-profile:v high`` → ``-profile:v:1 high``."""
    if len(args) % 2:
        raise ValueError(f"encoder arguments are not option/value pairs: {args}")
    out = []
    for opt, value in zip(args[::2], args[1::2], strict=True):
        name = opt[1:].removesuffix(":v")
        out += [f"-{name}:v:{index}", value]
    return out


def keyframe_args(encoder: str, gop: int, segment_seconds: float) -> list[str]:
    """Keyframes at every multiple of the segment length, and nowhere else, the same on
    every rung: forced by time (so rungs agree whatever the encoder), IDR, a fixed GOP
    and no scene-cut keyframes (x265: in x265-params, see ``Rung.as_profile``)."""
    args = ["-g", str(gop), "-keyint_min", str(gop), "-forced-idr", "1"]
    args += ["-force_key_frames", f"expr:gte(t,n_forced*{segment_seconds:g})"]
    if encoder == "libx264":
        args += ["-sc_threshold", "0"]
    elif encoder.endswith("_nvenc"):
        args += ["-no-scenecut", "1"]
    return args


# what the segment files are called: per rendition folder for HLS, flat for DASH
HLS_PLAYLIST = "index.m3u8"
DASH_INIT = "init-$RepresentationID$.$ext$"
DASH_MEDIA = "chunk-$RepresentationID$-$Number%05d$.$ext$"


def muxer_args(plan: GroupPlan) -> list[str]:
    """The group's muxer, its options and its output path."""
    g, seg = plan.group, f"{plan.segment_seconds:g}"
    if g.kind == "hls":
        ext = "ts" if g.segments == "mpegts" else "m4s"
        agroup = ",agroup:audio" if plan.audio else ""
        streams = [f"v:{k},name:{r.name}{agroup}" for k, r in enumerate(plan.rungs)]
        if plan.audio:
            streams.append(f"a:0,name:{AUDIO_RENDITION}{agroup},default:yes")
        args = ["-f", "hls", "-hls_time", seg, "-hls_playlist_type", "vod", "-hls_list_size", "0"]
        args += ["-hls_flags", "independent_segments", "-hls_segment_type", g.segments]
        if g.segments == "fmp4":
            args += ["-hls_fmp4_init_filename", "init.mp4"]
        args += ["-hls_segment_filename", str(plan.dir / "%v" / f"seg_%05d.{ext}")]
        args += ["-master_pl_name", g.entry_points[0], "-var_stream_map", " ".join(streams)]
        return [*args, str(plan.dir / "%v" / HLS_PLAYLIST)]
    sets = "id=0,streams=v" + (" id=1,streams=a" if plan.audio else "")
    args = ["-f", "dash", "-seg_duration", seg, "-use_template", "1", "-use_timeline", "1"]
    args += ["-adaptation_sets", sets, "-dash_segment_type", "mp4"]
    args += ["-init_seg_name", DASH_INIT, "-media_seg_name", DASH_MEDIA]
    if g.kind == "cmaf":  # the same segments, announced to HLS players too
        args += ["-hls_playlist", "1", "-hls_master_name", "master.m3u8"]
        args += ["-format_options", "movflags=+cmaf"]
    return [*args, str(plan.dir / "manifest.mpd")]


def group_args(info: MediaInfo, plan: GroupPlan, first: int, encoders: Encoders) -> list[str]:
    """One output file for the whole group: every rung (``[v<first>]`` on) and the input's
    audio encoded once, each video stream with its own encoder options."""
    argv: list[str] = []
    for k in range(len(plan.rungs)):
        argv += ["-map", f"[v{first + k}]"]
    if plan.audio:
        argv += ["-map", f"0:{info.audio_index}"]
    argv += ["-sn", "-dn"]
    for k, rung in enumerate(plan.rungs):
        encoder = encoders.for_codec(rung.rung.codec)
        argv += per_stream(video_encoder_args(rung.profile, encoder), k)
        argv += per_stream(keyframe_args(encoder, plan.gop, plan.segment_seconds), k)
    if plan.audio:
        g = plan.group
        argv += ["-c:a", "aac", "-b:a", g.audio_bitrate, "-ac", str(g.audio_channels)]
    argv += ["-max_muxing_queue_size", "4096"]
    return argv + muxer_args(plan)


def build_command(
    ffmpeg: str,
    input_path: Path,
    info: MediaInfo,
    plans: list[OutputPlan],
    encoders: Encoders,
    groups: list[GroupPlan] | tuple[()] = (),
) -> list[str]:
    """argv for the single ffmpeg process that writes every planned output and group."""
    if not plans and not groups:
        raise ValueError("no outputs planned")
    argv = [ffmpeg, *_GLOBAL_ARGS]
    if encoders.nvdec and info.video_codec in NVDEC_CODECS:
        argv += ["-hwaccel", "cuda"]  # frames come back to system memory for our filters
    # the file alone, read only with the container demuxer the probe found (no playlists)
    argv += input_args(input_path, info.demuxer)
    argv += ["-filter_complex", filter_graph(info, plans, groups)]
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
    first = len(plans)
    for group in groups:
        argv += group_args(info, group, first, encoders)
        first += len(group.rungs)
    return argv
