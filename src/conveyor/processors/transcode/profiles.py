"""The rendition table: every transcode type is one row of data, not code.

The transcoding service named seven types but left sizes, bitrates and preview
length open.  Keeping the choices in one declarative table means the README, the
command builder, the output checks and user-defined profiles (from
``transcode_profiles`` in the config) all read the same numbers, and a new
rendition never needs a code change.

Choices made for the seven built-in types (documented again in
docs/transcode-profiles.md):

* Quality is driven by CRF (constant quality), capped by ``maxrate`` /
  ``bufsize`` (VBV), so simple scenes stay small and busy scenes cannot blow
  a streaming budget.
* ``max_width`` x ``max_height`` is a box the picture is fitted into with
  its aspect ratio kept; a smaller input is never upscaled.
* Audio, when present, is AAC stereo; MP4s get ``+faststart`` so players can
  start before the download ends.
* H.265 in MP4 is tagged ``hvc1`` (in the command builder) so Apple players
  accept it.

Adaptive streaming (issue 18) adds a second kind of row, the output group
(``StreamGroup``: ``hls``, ``dash``, ``cmaf``): a ladder of ``Rung`` rows and
one audio rendition, written as playlists/manifests and segments under
``<prefix>/<group>/``.  Its rungs join the same ``split`` graph as every
other rendition, so a task still decodes its input once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Codec = Literal["h264", "h265", "jpeg"]
Container = Literal["mp4", "mov", "mkv", "jpg"]
DurationRule = Literal["full", "preview"]

_CONTENT_TYPES: dict[str, str] = {
    "mp4": "video/mp4",
    "mov": "video/quicktime",
    "mkv": "video/x-matroska",
    "jpg": "image/jpeg",
}
_BITRATE_RE = r"^[1-9][0-9]*(\.[0-9]+)?[kKmM]?$"
_NAME_RE = r"^[a-z0-9][a-z0-9_-]{0,62}$"
# Option names go straight into ffmpeg's argv: keep them to plain option syntax
# (``profile:v``, ``x265-params``) so a profile cannot smuggle in an output path.
_OPTION_RE = re.compile(r"^[a-z0-9][a-z0-9_:-]*$")
# Options the command builder owns: setting them from a profile would break the graph.
_RESERVED_OPTIONS = frozenset(
    ("i", "y", "n", "f", "map", "c", "codec", "c:v", "codec:v", "c:a", "codec:a", "an", "vn")
) | frozenset(("vf", "af", "filter", "filter_complex", "lavfi", "progress", "frames", "frames:v"))


class Profile(BaseModel):
    """One rendition: what to encode, how big, how good, with or without sound."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME_RE)
    description: str = ""
    codec: Codec
    # Derived from the codec when omitted: mp4 for video, jpg for stills.
    container: Container | None = None
    content_type: str | None = None
    # The box the picture is fitted into (aspect kept, never upscaled); None = unbounded.
    max_width: int | None = Field(None, ge=16, le=8192)
    max_height: int | None = Field(None, ge=16, le=8192)
    # x264/x265 CRF (lower = better); NVENC gets the same number as -cq.
    crf: int = Field(23, ge=0, le=51)
    # JPEG quality as ffmpeg's -q:v (2 = best, 31 = worst); stills only.
    jpeg_quality: int = Field(3, ge=2, le=31)
    maxrate: str | None = Field(None, pattern=_BITRATE_RE)
    bufsize: str | None = Field(None, pattern=_BITRATE_RE)
    audio: bool = True
    audio_bitrate: str = Field("128k", pattern=_BITRATE_RE)
    audio_channels: int = Field(2, ge=1, le=8)
    # x264/x265 preset for CPU encoding; NVENC uses nvenc_preset (p1 fastest .. p7 best).
    preset: str = Field("medium", pattern=r"^[a-z0-9]+$")
    nvenc_preset: str = Field("p4", pattern=r"^p[1-7]$")
    # Extra encoder options as ``{option: value}`` ({"profile:v": "high"} → -profile:v high):
    # extra_options go to every encoder, cpu_options only to libx264/libx265 (``x265-params``
    # is merged with the quiet logging the builder adds), nvenc_options only to NVENC.
    extra_options: dict[str, str] = Field(default_factory=dict)
    cpu_options: dict[str, str] = Field(default_factory=dict)
    nvenc_options: dict[str, str] = Field(default_factory=dict)
    # full: the whole input.  preview: the first min(preview_seconds, duration/2) seconds,
    # so a preview is always shorter than its input.
    duration: DurationRule = "full"
    preview_seconds: float | None = Field(None, gt=0)
    # Stills: which frame, as a fraction of the input duration.
    frame_at: float | None = Field(None, ge=0, lt=1)

    @model_validator(mode="before")
    @classmethod
    def _fill_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        codec = data.get("codec")
        if data.get("container") is None and codec in ("h264", "h265", "jpeg"):
            data["container"] = "jpg" if codec == "jpeg" else "mp4"
        if data.get("content_type") is None and data.get("container") in _CONTENT_TYPES:
            data["content_type"] = _CONTENT_TYPES[data["container"]]
        if codec == "jpeg":
            data.setdefault("audio", False)
            data.setdefault("frame_at", 0.1)
        if data.get("maxrate") and not data.get("bufsize"):
            data["bufsize"] = _double(str(data["maxrate"]))
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Profile:
        still = self.codec == "jpeg"
        if still != (self.container == "jpg"):
            raise ValueError(f"codec {self.codec} cannot be written to a .{self.container} file")
        if still and self.audio:
            raise ValueError("a jpeg still cannot carry audio; set audio: false")
        if still and self.duration != "full":
            raise ValueError("a jpeg still takes one frame; duration rules do not apply")
        if not still and self.frame_at is not None:
            raise ValueError("frame_at only applies to jpeg stills")
        if self.bufsize and not self.maxrate:
            raise ValueError("bufsize needs maxrate")
        _check_options(self.extra_options, self.cpu_options, self.nvenc_options)
        return self

    @property
    def ext(self) -> str:
        assert self.container is not None  # filled in by _fill_defaults
        return self.container

    @property
    def is_still(self) -> bool:
        return self.codec == "jpeg"

    @property
    def is_preview(self) -> bool:
        return self.duration == "preview"


def _check_options(*groups: dict[str, str], reserved: frozenset[str] = _RESERVED_OPTIONS) -> None:
    for opt in (o for g in groups for o in g):
        if not _OPTION_RE.match(opt):
            raise ValueError(f"invalid encoder option name {opt!r}")
        if opt in reserved:
            raise ValueError(f"option {opt!r} is set by Conveyor and cannot be overridden")


def _double(rate: str) -> str:
    """Default VBV buffer: two seconds at maxrate, a common streaming choice."""
    m = re.match(r"^([0-9.]+)([kKmM]?)$", rate)
    if not m:
        return rate
    value = float(m.group(1)) * 2
    text = f"{value:g}"
    return f"{text}{m.group(2)}"


# The seven built-in types.  Numbers are starting points tuned for web delivery;
# users override any of them by redefining the type in ``transcode_profiles``.
BUILTIN_PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            name="mp4_standard",
            description="H.264/AAC MP4 in 848x480 (480p SD) for universal playback",
            codec="h264",
            max_width=848,
            max_height=480,
            crf=23,
            maxrate="1500k",
            bufsize="3000k",
            audio_bitrate="128k",
            extra_options={"profile:v": "high"},
        ),
        Profile(
            name="mp4_smooth",
            description="H.264/AAC MP4 in 640x360 at a low bitrate for slow networks",
            codec="h264",
            max_width=640,
            max_height=360,
            crf=26,
            maxrate="800k",
            bufsize="1600k",
            audio_bitrate="96k",
            # main profile: decodes smoothly on old phones and set-top boxes
            extra_options={"profile:v": "main"},
        ),
        Profile(
            name="hdlbr_h265",
            description="HD low-bitrate H.265: up to 1080p at about half H.264's bitrate",
            codec="h265",
            max_width=1920,
            max_height=1080,
            crf=26,
            maxrate="2500k",
            bufsize="5000k",
            audio_bitrate="128k",
        ),
        Profile(
            name="lcd_h265",
            description="H.265 up to 720p tuned for LCD panels: adaptive quantisation "
            "biased to dark, flat areas to avoid banding",
            codec="h265",
            max_width=1280,
            max_height=720,
            crf=24,
            maxrate="2000k",
            bufsize="4000k",
            audio_bitrate="128k",
            # aq-mode=3 spends bits on dark flat gradients, where LCD backlights make
            # banding visible; lighter deblocking keeps fine texture that hides it.
            cpu_options={"x265-params": "aq-mode=3:aq-strength=1.0:deblock=-1,-1"},
            nvenc_options={"spatial-aq": "1", "temporal-aq": "1", "aq-strength": "10"},
        ),
        Profile(
            name="h265_mute",
            description="H.265 up to 720p without audio (for muted autoplay and video walls)",
            codec="h265",
            max_width=1280,
            max_height=720,
            crf=26,
            maxrate="1800k",
            bufsize="3600k",
            audio=False,
        ),
        Profile(
            name="custom_mute_preview",
            description="Muted H.264 preview of the first min(10 s, half the input)",
            codec="h264",
            max_width=640,
            max_height=360,
            crf=28,
            maxrate="600k",
            bufsize="1200k",
            audio=False,
            duration="preview",
            extra_options={"profile:v": "main"},
        ),
        Profile(
            name="thumbnail",
            description="JPEG still taken at 10% of the duration, fitted in 640x360",
            codec="jpeg",
            max_width=640,
            max_height=360,
            jpeg_quality=3,
            frame_at=0.1,
        ),
    )
}


# -- adaptive streaming: output groups ---------------------------------------------------
GroupKind = Literal["hls", "dash", "cmaf"]
GROUP_KINDS: tuple[str, ...] = get_args(GroupKind)
SegmentType = Literal["mpegts", "fmp4"]
# A rung's keyframes are the group's business: every rung must cut at the same instants.
_GOP_OPTIONS = frozenset(
    ("g", "keyint_min", "force_key_frames", "sc_threshold", "forced-idr", "no-scenecut")
)
_GOP_X265_PARAMS = re.compile(r"(^|:)(keyint|min-keyint|scenecut|open-gop|no-open-gop)=")
# the folder of a group's audio rendition (HLS), so no rung may take the name
AUDIO_RENDITION = "audio"


class Rung(BaseModel):
    """One video rendition of a streaming ladder: a box, a quality and a bitrate cap.

    The keyframe options are not here: the group sets them, the same for every rung."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,30}$")
    codec: Literal["h264", "h265"] = "h264"
    max_width: int | None = Field(None, ge=16, le=8192)
    max_height: int | None = Field(None, ge=16, le=8192)
    crf: int = Field(23, ge=0, le=51)
    # required: players pick a rung by its declared bandwidth (the cap, plus the audio)
    maxrate: str = Field(pattern=_BITRATE_RE)
    bufsize: str | None = Field(None, pattern=_BITRATE_RE)
    # None: the group's (whose default is medium / p4)
    preset: str | None = Field(None, pattern=r"^[a-z0-9]+$")
    nvenc_preset: str | None = Field(None, pattern=r"^p[1-7]$")
    extra_options: dict[str, str] = Field(default_factory=dict)
    cpu_options: dict[str, str] = Field(default_factory=dict)
    nvenc_options: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _fill_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("maxrate") and not data.get("bufsize"):
            data = {**data, "bufsize": _double(str(data["maxrate"]))}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Rung:
        if self.name == AUDIO_RENDITION:
            raise ValueError(f"a rung cannot be called {AUDIO_RENDITION!r} (the audio's folder)")
        _check_options(
            self.extra_options,
            self.cpu_options,
            self.nvenc_options,
            reserved=_RESERVED_OPTIONS | _GOP_OPTIONS,
        )
        if _GOP_X265_PARAMS.search(self.cpu_options.get("x265-params", "")):
            raise ValueError("keyframe placement (keyint, scenecut, open-gop) is set by the group")
        return self

    def box_area(self) -> float:
        return float(self.max_width or math.inf) * float(self.max_height or math.inf)

    def as_profile(self, group: StreamGroup) -> Profile:
        """The rung as a video-only profile, for the encoder arguments."""
        cpu = dict(self.cpu_options)
        if self.codec == "h265":  # x265 reads its GOP rules from x265-params only
            user = cpu.get("x265-params", "")
            cpu["x265-params"] = ":".join(x for x in ("scenecut=0:open-gop=0", user) if x)
        return Profile(
            name=f"{group.name}-{self.name}"[:63],
            codec=self.codec,
            max_width=self.max_width,
            max_height=self.max_height,
            crf=self.crf,
            maxrate=self.maxrate,
            bufsize=self.bufsize,
            audio=False,
            preset=self.preset or group.preset,
            nvenc_preset=self.nvenc_preset or group.nvenc_preset,
            extra_options=self.extra_options,
            cpu_options=cpu,
            nvenc_options=self.nvenc_options,
        )


# The default ladder (Apple's HLS authoring sizes): H.264, capped CRF, High profile down to
# 540p and Main below, for old phones.  Rungs above the input are dropped at run time.
DEFAULT_LADDER: tuple[Rung, ...] = (
    Rung(
        name="1080p",
        max_width=1920,
        max_height=1080,
        crf=23,
        maxrate="6000k",
        extra_options={"profile:v": "high"},
    ),
    Rung(
        name="720p",
        max_width=1280,
        max_height=720,
        crf=23,
        maxrate="3000k",
        extra_options={"profile:v": "high"},
    ),
    Rung(
        name="540p",
        max_width=960,
        max_height=540,
        crf=23,
        maxrate="2000k",
        extra_options={"profile:v": "high"},
    ),
    Rung(
        name="360p",
        max_width=640,
        max_height=360,
        crf=24,
        maxrate="800k",
        extra_options={"profile:v": "main"},
    ),
    Rung(
        name="234p",
        max_width=416,
        max_height=234,
        crf=25,
        maxrate="300k",
        extra_options={"profile:v": "main"},
    ),
)

# what each kind writes at the top of its folder: the files a player opens
ENTRY_POINTS: dict[str, tuple[str, ...]] = {
    "hls": ("master.m3u8",),
    "dash": ("manifest.mpd",),
    "cmaf": ("manifest.mpd", "master.m3u8"),
}


class StreamGroup(BaseModel):
    """An adaptive-streaming output group: a ladder of renditions plus one audio rendition,
    segmented with keyframes aligned across rungs, under ``<prefix>/<name>/``.

    ``hls``: ``master.m3u8`` and one playlist per rendition (MPEG-TS segments, or fMP4
    with ``segment_type: fmp4``).  ``dash``: ``manifest.mpd`` and fMP4 segments.
    ``cmaf``: one set of fMP4 segments that both a ``manifest.mpd`` and a ``master.m3u8``
    point at, so HLS and DASH players share it (and it is encoded once)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME_RE)
    description: str = ""
    kind: GroupKind
    ladder: tuple[Rung, ...] = Field(default=DEFAULT_LADDER, min_length=1, max_length=12)
    # target segment length; keyframes are forced at every multiple of it
    segment_seconds: float = Field(4.0, ge=1, le=60)
    # HLS only (DASH and CMAF segments are always fMP4); default mpegts
    segment_type: SegmentType | None = None
    audio: bool = True
    audio_bitrate: str = Field("128k", pattern=_BITRATE_RE)
    audio_channels: int = Field(2, ge=1, le=8)
    # every rung's encoder preset unless the rung names its own
    preset: str = Field("medium", pattern=r"^[a-z0-9]+$")
    nvenc_preset: str = Field("p4", pattern=r"^p[1-7]$")

    @model_validator(mode="after")
    def _consistent(self) -> StreamGroup:
        names = [r.name for r in self.ladder]
        if len(set(names)) != len(names):
            raise ValueError(f"rung names must differ: {', '.join(names)}")
        if self.kind != "hls" and self.segment_type not in (None, "fmp4"):
            raise ValueError(f"{self.kind} segments are fMP4; segment_type applies to hls only")
        if self.segments == "mpegts" and any(r.codec == "h265" for r in self.ladder):
            raise ValueError("H.265 in HLS needs fMP4 segments: set segment_type: fmp4")
        return self

    @property
    def segments(self) -> SegmentType:
        return (self.segment_type or "mpegts") if self.kind == "hls" else "fmp4"

    @property
    def entry_points(self) -> tuple[str, ...]:
        return ENTRY_POINTS[self.kind]


BUILTIN_GROUPS: dict[str, StreamGroup] = {
    g.name: g
    for g in (
        StreamGroup(
            name="hls",
            kind="hls",
            description="HLS ladder (1080p to 234p H.264 + AAC, MPEG-TS segments): "
            "master.m3u8 and a playlist per rendition",
        ),
        StreamGroup(
            name="dash",
            kind="dash",
            description="MPEG-DASH ladder (1080p to 234p H.264 + AAC, fMP4 segments): manifest.mpd",
        ),
        StreamGroup(
            name="cmaf",
            kind="cmaf",
            description="CMAF ladder: one set of fMP4 segments served by both "
            "manifest.mpd (DASH) and master.m3u8 (HLS)",
        ),
    )
}

# A row of the table: a file rendition or a streaming group.
Entry = Profile | StreamGroup


class ProfileConfigError(ValueError):
    """A user profile in the config is invalid; the message names it and the field."""


def build_profile_table(
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Entry]:
    """The built-in types and groups plus (and overridden by) user profiles.

    A user entry that names a built-in type is merged over that row, so
    ``{"mp4_standard": {"crf": 20}}`` changes just the quality; a new name
    must say at least its codec, or ``kind: hls|dash|cmaf`` for a streaming group
    (``{"hls": {"segment_seconds": 6}}`` changes a built-in group; a ``ladder``
    given replaces the ladder).
    """
    table: dict[str, Entry] = {**BUILTIN_PROFILES, **BUILTIN_GROUPS}
    for name, raw in (overrides or {}).items():
        current = table.get(name)
        kind = raw.get("kind", current.kind if isinstance(current, StreamGroup) else None)
        try:
            if kind is not None:
                table[name] = _group_row(name, raw, current, kind)
            else:
                table[name] = _profile_row(name, raw, current)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "profile"
            raise ProfileConfigError(
                f"transcode profile {name!r} is invalid: {where}: {first['msg']}"
            ) from exc
    return table


def _profile_row(name: str, raw: Mapping[str, Any], current: Entry | None) -> Profile:
    base = current.model_dump(exclude_unset=False) if isinstance(current, Profile) else {}
    if base:
        # derived fields must follow a changed codec/container, not stick to the built-in row's
        for derived in ("container", "content_type", "frame_at", "bufsize"):
            if derived not in raw:
                base.pop(derived, None)
    return Profile.model_validate({**base, **dict(raw), "name": name})


def _group_row(name: str, raw: Mapping[str, Any], current: Entry | None, kind: Any) -> StreamGroup:
    if kind not in GROUP_KINDS:
        raise ProfileConfigError(
            f"transcode profile {name!r} is invalid: kind: must be one of "
            f"{', '.join(GROUP_KINDS)} (leave it out for a file rendition)"
        )
    base = current.model_dump(exclude_unset=False) if isinstance(current, StreamGroup) else {}
    return StreamGroup.model_validate({**base, **dict(raw), "name": name})
