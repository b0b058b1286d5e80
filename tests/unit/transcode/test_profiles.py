"""The rendition table: seven seed rows that match the mission, and safe user rows."""

from __future__ import annotations

import pytest

from conveyor.processors.transcode.profiles import (
    BUILTIN_PROFILES,
    Profile,
    ProfileConfigError,
    build_profile_table,
)
from conveyor.processors.transcode.settings import ALL_TRANSCODE_TYPES


def test_seed_table_is_exactly_the_seven_types_in_order() -> None:
    assert list(BUILTIN_PROFILES) == ALL_TRANSCODE_TYPES


@pytest.mark.parametrize(
    ("name", "codec", "box", "audio", "ext"),
    [
        ("mp4_standard", "h264", (848, 480), True, "mp4"),
        ("mp4_smooth", "h264", (640, 360), True, "mp4"),
        ("hdlbr_h265", "h265", (1920, 1080), True, "mp4"),
        ("lcd_h265", "h265", (1280, 720), True, "mp4"),
        ("h265_mute", "h265", (1280, 720), False, "mp4"),
        ("custom_mute_preview", "h264", (640, 360), False, "mp4"),
        ("thumbnail", "jpeg", (640, 360), False, "jpg"),
    ],
)
def test_seed_rows(name: str, codec: str, box: tuple[int, int], audio: bool, ext: str) -> None:
    p = BUILTIN_PROFILES[name]
    assert (p.codec, (p.max_width, p.max_height), p.audio, p.ext) == (codec, box, audio, ext)
    assert p.content_type == ("image/jpeg" if ext == "jpg" else "video/mp4")
    assert p.description, "every seed row says what it is for"
    if not p.is_still:
        assert p.maxrate and p.bufsize, "every video rendition has a bitrate cap"


def test_rule_columns() -> None:
    assert BUILTIN_PROFILES["custom_mute_preview"].is_preview
    assert BUILTIN_PROFILES["thumbnail"].is_still
    assert BUILTIN_PROFILES["thumbnail"].frame_at == pytest.approx(0.1)
    assert [n for n, p in BUILTIN_PROFILES.items() if p.is_preview] == ["custom_mute_preview"]
    # the LCD row's reason to exist: banding-aware adaptive quantisation
    assert "aq-mode=3" in BUILTIN_PROFILES["lcd_h265"].cpu_options["x265-params"]
    assert BUILTIN_PROFILES["lcd_h265"].nvenc_options


def test_user_profile_needs_little_and_gets_defaults() -> None:
    table = build_profile_table({"tiny": {"codec": "h264", "max_width": 160}})
    tiny = table["tiny"]
    assert (tiny.name, tiny.ext, tiny.content_type, tiny.audio) == (
        "tiny",
        "mp4",
        "video/mp4",
        True,
    )
    assert tiny.max_height is None
    assert set(BUILTIN_PROFILES) < set(table)


def test_override_merges_over_the_seed_row() -> None:
    table = build_profile_table({"mp4_standard": {"crf": 20, "maxrate": "2M"}})
    p = table["mp4_standard"]
    assert (p.crf, p.maxrate, p.bufsize) == (20, "2M", "4M")  # bufsize follows maxrate
    assert (p.max_width, p.max_height, p.codec) == (848, 480, "h264")
    assert BUILTIN_PROFILES["mp4_standard"].crf == 23, "the seed table itself is untouched"


def test_still_profile_defaults() -> None:
    p = Profile.model_validate({"name": "poster", "codec": "jpeg", "max_width": 1280})
    assert (p.ext, p.audio, p.frame_at, p.content_type) == ("jpg", False, 0.1, "image/jpeg")


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"codec": "vp9"}, "codec"),
        ({"codec": "h264", "max_width": 0}, "max_width"),
        ({"codec": "h264", "maxrate": "fast"}, "maxrate"),
        ({"codec": "jpeg", "audio": True}, "audio"),
        ({"codec": "h264", "container": "jpg"}, "cannot be written"),
        ({"codec": "h264", "frame_at": 0.5}, "frame_at"),
        ({"codec": "h264", "extra_options": {"map": "0"}}, "set by Conveyor"),
        ({"codec": "h264", "extra_options": {"-y": "1"}}, "invalid encoder option"),
        ({"codec": "h264", "colour": "red"}, "colour"),
    ],
)
def test_invalid_user_profiles_name_the_problem(raw: dict[str, object], needle: str) -> None:
    with pytest.raises(ProfileConfigError) as err:
        build_profile_table({"mine": raw})
    assert "'mine'" in str(err.value) and needle in str(err.value)


def test_profile_names_are_safe_file_names() -> None:
    with pytest.raises(ProfileConfigError):
        build_profile_table({"../evil": {"codec": "h264"}})
