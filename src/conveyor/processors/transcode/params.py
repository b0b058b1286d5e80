"""What a transcode task may ask for: the contract with API, CLI and console.

Only the shape lives here.  Which type names exist depends on the
configured profile table, so that check is made by
``TranscodeProcessor.validate``, which knows the table.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ChunkParams(BaseModel):
    """One chunk of a split task (set by the task that split, never by a submitter's
    form): frames ``first`` .. ``first + frames - 1`` of the source, from the keyframe at
    ``start`` seconds to ``end`` (``split.Chunk``); ``frame_s`` is one frame's duration."""

    model_config = ConfigDict(extra="forbid")

    index: int = Field(ge=0)
    count: int = Field(ge=1)
    first: int = Field(ge=0)
    frames: int = Field(ge=1)
    start: float = Field(ge=0)
    end: float = Field(gt=0)
    frame_s: float = Field(gt=0)


class TranscodeParams(BaseModel):
    """What a transcode task may ask for; unknown fields are refused, not ignored."""

    model_config = ConfigDict(extra="forbid")

    transcode_types: list[str] = Field(min_length=1)
    # Publish under this key prefix instead of "<input key without extension>/".
    output_prefix: str | None = None
    # Streaming groups' segment length for this task, over each group's own (default 4 s).
    segment_seconds: float | None = Field(None, ge=1, le=60)
    # Read by the worker for its per-task timeout; kept so validation does not drop it.
    timeout_s: float | None = Field(None, gt=0, le=7 * 86400)  # as SubmitRequest.timeout_s
    # Split and stitch (docs/transcode-profiles.md): true splits whatever the input's
    # length, false never; unset splits an input longer than the split_after setting.
    split: bool | None = None
    # Set on a chunk task by the task that split (its parent): encode this chunk only.
    chunk: ChunkParams | None = None
    # Set on the split's audio part by its parent: encode the source's audio only, once.
    audio_part: bool | None = None

    @field_validator("transcode_types")
    @classmethod
    def _dedupe(cls, v: list[str]) -> list[str]:
        seen: list[str] = []
        for t in v:
            t = t.strip()
            if not t:
                raise ValueError("transcode type names cannot be empty")
            if t not in seen:
                seen.append(t)
        return seen

    @field_validator("output_prefix")
    @classmethod
    def _prefix(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = v.strip().strip("/")
        return v or None
