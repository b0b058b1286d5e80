"""When a transcode task is split (processors/transcode/splitting.py): pure decisions."""

from __future__ import annotations

from pathlib import Path

from conveyor.processors.transcode.command import plan_outputs
from conveyor.processors.transcode.params import TranscodeParams
from conveyor.processors.transcode.probe import MediaInfo
from conveyor.processors.transcode.profiles import BUILTIN_PROFILES
from conveyor.processors.transcode.splitting import full_length, split_reason


def _info(duration: float) -> MediaInfo:
    return MediaInfo(duration, 1280, 720, 0, "h264", 25.0, 1, "aac", "mov,mp4,m4a,3gp,3g2,mj2")


def _plans(*types: str, duration: float = 300.0) -> list:  # type: ignore[type-arg]
    return plan_outputs(_info(duration), [BUILTIN_PROFILES[t] for t in types], Path("/x"), 10.0)


def test_only_whole_length_video_is_chunked() -> None:
    plans = _plans("mp4_standard", "custom_mute_preview", "thumbnail")
    assert [p.name for p in full_length(plans)] == ["mp4_standard"]


def test_split_by_length_or_by_request() -> None:
    params = TranscodeParams(transcode_types=["mp4_standard"])
    long_, short = _info(300.0), _info(60.0)
    assert "longer than 120 s" in (
        split_reason(params, 120, long_, _plans("mp4_standard"), []) or ""
    )
    assert split_reason(params, 120, short, _plans("mp4_standard"), []) is None
    forced = TranscodeParams(transcode_types=["mp4_standard"], split=True)
    assert split_reason(forced, 120, short, _plans("mp4_standard"), []) == "params.split is true"
    never = TranscodeParams(transcode_types=["mp4_standard"], split=False)
    assert split_reason(never, 120, long_, _plans("mp4_standard"), []) is None


def test_stills_only_or_streaming_groups_are_not_split() -> None:
    params = TranscodeParams(transcode_types=["thumbnail"], split=True)
    assert split_reason(params, 120, _info(300.0), _plans("thumbnail"), []) is None
    grouped = TranscodeParams(transcode_types=["mp4_standard", "hls"], split=True)
    group_plan = object()
    assert split_reason(grouped, 120, _info(300.0), _plans("mp4_standard"), [group_plan]) is None  # type: ignore[list-item]
