"""The transcode kind's settings: ``CONVEYOR_TRANSCODE_<FIELD>``, and the names they had
before, which keep working (env; config.yaml key):

* ``default_types``: ``DEFAULT_TRANSCODE_TYPES``, ``CONVEYOR_DEFAULT_TRANSCODE_TYPES``;
  ``default_transcode_types``
* ``profiles``: ``CONVEYOR_TRANSCODE_PROFILES`` (JSON); ``transcode_profiles``
* ``preview_seconds``: ``CONVEYOR_PREVIEW_SECONDS``; ``preview_seconds``
* ``ffmpeg``, ``ffprobe``: ``CONVEYOR_FFMPEG``, ``CONVEYOR_FFPROBE``; ``ffmpeg``, ``ffprobe``
* ``encoder`` (``auto``, ``cpu``, ``nvenc``): ``CONVEYOR_ENCODER``; ``encoder``
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from conveyor.config import KindSettings, parse_duration

# the seven built-in types, in table order (the profile table: profiles.BUILTIN_PROFILES)
ALL_TRANSCODE_TYPES = [
    "mp4_standard",
    "mp4_smooth",
    "hdlbr_h265",
    "lcd_h265",
    "h265_mute",
    "custom_mute_preview",
    "thumbnail",
]
# what a task gets when it names none (an upload, a submit without transcode_types)
DEFAULT_TRANSCODE_TYPES = ["mp4_standard", "mp4_smooth", "thumbnail"]


def _names(field: str, *older: str) -> AliasChoices:
    return AliasChoices(f"CONVEYOR_TRANSCODE_{field.upper()}", *older)


class TranscodeSettings(KindSettings):
    model_config = SettingsConfigDict(env_prefix="CONVEYOR_TRANSCODE_")
    keys: ClassVar[dict[str, str]] = {
        "default_types": "default_transcode_types",
        "preview_seconds": "preview_seconds",
        "ffmpeg": "ffmpeg",
        "ffprobe": "ffprobe",
        "encoder": "encoder",
    }

    default_types: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_TRANSCODE_TYPES),
        validation_alias=_names(
            "default_types", "CONVEYOR_DEFAULT_TRANSCODE_TYPES", "DEFAULT_TRANSCODE_TYPES"
        ),
    )
    # user-defined renditions (docs/transcode-profiles.md), over the built-in table
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)
    preview_seconds: float = Field(
        10.0, validation_alias=_names("preview_seconds", "CONVEYOR_PREVIEW_SECONDS")
    )
    ffmpeg: str = Field("ffmpeg", validation_alias=_names("ffmpeg", "CONVEYOR_FFMPEG"))
    ffprobe: str = Field("ffprobe", validation_alias=_names("ffprobe", "CONVEYOR_FFPROBE"))
    encoder: str = Field("auto", validation_alias=_names("encoder", "CONVEYOR_ENCODER"))
    # split and stitch: an input longer than this (seconds) is encoded as chunks by
    # several workers at once (a task's params.split overrides); each chunk about
    # chunk_seconds long, cut on the source's keyframes
    split_after: float = Field(120.0, gt=0)
    chunk_seconds: float = Field(30.0, ge=5)

    @field_validator("default_types", mode="before")
    @classmethod
    def _csv(cls, v: Any) -> Any:
        if isinstance(v, str):
            if v.strip().startswith("["):
                return json.loads(v)
            return [t.strip() for t in v.split(",") if t.strip()]
        return v

    @field_validator("preview_seconds", "split_after", "chunk_seconds", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float:
        return parse_duration(v)

    @field_validator("encoder")
    @classmethod
    def _encoder(cls, v: str) -> str:
        if v not in ("auto", "cpu", "nvenc"):
            raise ValueError("encoder must be auto, cpu or nvenc")
        return v
