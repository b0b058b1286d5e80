"""The rendition table: every transcode type is one row of data, not code.

Seed 002 names seven types but leaves sizes, bitrates and preview length
open.  Keeping the choices in one declarative table means the README, the
command builder, the output checks and user-defined profiles (from
``transcode_profiles`` in the config) all read the same numbers, and a new
rendition never needs a code change.

Choices made for the seed types (documented again in the README):

* Quality is driven by CRF (constant quality), capped by ``maxrate`` /
  ``bufsize`` (VBV), so simple scenes stay small and busy scenes cannot blow
  a streaming budget.
* ``max_width`` x ``max_height`` is a box the picture is fitted into with
  its aspect ratio kept; a smaller input is never upscaled.
* Audio, when present, is AAC stereo; MP4s get ``+faststart`` so players can
  start before the download ends.
* H.265 in MP4 is tagged ``hvc1`` (in the command builder) so Apple players
  accept it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

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
        for opt in (*self.extra_options, *self.cpu_options, *self.nvenc_options):
            if not _OPTION_RE.match(opt):
                raise ValueError(f"invalid encoder option name {opt!r}")
            if opt in _RESERVED_OPTIONS:
                raise ValueError(f"option {opt!r} is set by Conveyor and cannot be overridden")
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


def _double(rate: str) -> str:
    """Default VBV buffer: two seconds at maxrate, a common streaming choice."""
    m = re.match(r"^([0-9.]+)([kKmM]?)$", rate)
    if not m:
        return rate
    value = float(m.group(1)) * 2
    text = f"{value:g}"
    return f"{text}{m.group(2)}"


# The seven seed types.  Numbers are starting points tuned for web delivery;
# users override any of them by redefining the type in ``transcode_profiles``.
SEED_PROFILES: dict[str, Profile] = {
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


class ProfileConfigError(ValueError):
    """A user profile in the config is invalid; the message names it and the field."""


def build_profile_table(
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Profile]:
    """The seed table plus (and overridden by) user profiles from the config.

    A user entry that names a seed type is merged over that seed row, so
    ``{"mp4_standard": {"crf": 20}}`` changes just the quality; a new name
    must say at least its codec.
    """
    table = dict(SEED_PROFILES)
    for name, raw in (overrides or {}).items():
        base = table[name].model_dump(exclude_unset=False) if name in table else {}
        if name in table:
            # derived fields must follow a changed codec/container, not stick to the seed's
            for derived in ("container", "content_type", "frame_at", "bufsize"):
                if derived not in raw:
                    base.pop(derived, None)
        data = {**base, **dict(raw), "name": name}
        try:
            table[name] = Profile.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "profile"
            raise ProfileConfigError(
                f"transcode profile {name!r} is invalid: {where}: {first['msg']}"
            ) from exc
    return table
