"""Progress parsing, throttling, error tidying and ffprobe JSON interpretation."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor.errors import InputRejected
from conveyor.processors.transcode.probe import parse_media_info
from conveyor.processors.transcode.runner import ProgressParser, Throttle, blames_input, tidy_lines


def feed_block(parser: ProgressParser, **fields: str) -> bool:
    closed = False
    for k, v in fields.items():
        closed = parser.feed(f"{k}={v}\n")
    return closed


def test_progress_blocks_and_percent() -> None:
    p = ProgressParser()
    assert p.percent(10.0) == 0.0
    assert not p.feed("frame=10\n")
    assert feed_block(p, out_time_us="2500000", speed="1.5x", progress="continue")
    assert p.out_time_s == pytest.approx(2.5) and p.speed == pytest.approx(1.5)
    assert p.percent(10.0) == pytest.approx(25.0)
    feed_block(p, out_time_us="12000000", progress="continue")
    assert p.percent(10.0) == 99.0, "held below 100 until ffmpeg says end"
    feed_block(p, out_time_us="12000000", progress="end")
    assert p.ended and p.percent(10.0) == 100.0


def test_before_the_first_frame_values_are_na() -> None:
    p = ProgressParser()
    feed_block(
        p, out_time_us="N/A", out_time_ms="N/A", out_time="N/A", speed="N/A", progress="continue"
    )
    assert p.out_time_s is None and p.speed is None and p.percent(5.0) == 0.0


def test_fallbacks_out_time_ms_is_microseconds_and_out_time_text() -> None:
    p = ProgressParser()
    feed_block(p, out_time_ms="3000000", progress="continue")
    assert p.out_time_s == pytest.approx(3.0)
    q = ProgressParser()
    feed_block(q, out_time="00:01:02.500000", progress="continue")
    assert q.out_time_s == pytest.approx(62.5)


def test_progress_never_goes_backwards() -> None:
    p = ProgressParser()
    feed_block(p, out_time_us="4000000", progress="continue")
    feed_block(p, out_time_us="1000000", progress="continue")
    assert p.out_time_s == pytest.approx(4.0)


def test_garbage_lines_are_ignored() -> None:
    p = ProgressParser()
    for line in ("", "\n", "no equals sign", "=", "progress"):
        assert not p.feed(line)
    assert p.percent(1.0) == 0.0


def test_throttle() -> None:
    now = [100.0]
    t = Throttle(0.5, clock=lambda: now[0])
    assert t.ready()
    now[0] += 0.2
    assert not t.ready()
    assert t.ready(force=True)
    now[0] += 0.49
    assert not t.ready()
    now[0] += 0.02
    assert t.ready()


def test_tidy_lines_and_input_blame() -> None:
    lines = [
        "[mov,mp4,m4a,3gp,3g2,mj2 @ 0x55f880dfe1c0] moov atom not found",
        "/tmp/w/input.mp4: Invalid data found when processing input",
        "/tmp/w/input.mp4: Invalid data found when processing input",
    ]
    assert (
        tidy_lines(lines, "/tmp/w/input.mp4")
        == "moov atom not found; Invalid data found when processing input"
    )
    assert blames_input(lines)
    assert not blames_input(["Conversion failed!", "x265 [error]: out of memory"])


# -- ffprobe JSON ---------------------------------------------------------------------
def probe_json(
    *streams: dict[str, Any], duration: str = "12.5", fmt: str = "mov"
) -> dict[str, Any]:
    return {"format": {"format_name": fmt, "duration": duration}, "streams": list(streams)}


VIDEO = {
    "index": 0,
    "codec_type": "video",
    "codec_name": "h264",
    "width": 1920,
    "height": 1080,
    "avg_frame_rate": "30000/1001",
    "sample_aspect_ratio": "1:1",
}
AUDIO = {"index": 1, "codec_type": "audio", "codec_name": "aac"}


def test_parse_plain_video_with_audio() -> None:
    info = parse_media_info(probe_json(VIDEO, AUDIO))
    assert (info.width, info.height, info.duration) == (1920, 1080, 12.5)
    assert (info.video_index, info.audio_index, info.has_audio) == (0, 1, True)
    assert info.fps == pytest.approx(29.97, abs=0.01)


def test_duration_is_the_videos_when_known() -> None:
    """A 10 s soundtrack under 2 s of picture: a full rendition is 2 s, not truncated."""
    info = parse_media_info(probe_json({**VIDEO, "duration": "2.000"}, AUDIO, duration="10.0"))
    assert info.duration == 2.0


def test_cover_art_is_not_the_video() -> None:
    cover = {**VIDEO, "index": 0, "codec_name": "mjpeg", "disposition": {"attached_pic": 1}}
    with pytest.raises(InputRejected, match="no video stream"):
        parse_media_info(probe_json(cover, {**AUDIO, "index": 1}))
    info = parse_media_info(probe_json(cover, {**VIDEO, "index": 2}, AUDIO))
    assert info.video_index == 2


def test_rotation_and_non_square_pixels_give_display_size() -> None:
    rotated = {**VIDEO, "side_data_list": [{"side_data_type": "Display Matrix", "rotation": -90}]}
    assert (
        parse_media_info(probe_json(rotated)).width,
        parse_media_info(probe_json(rotated)).height,
    ) == (1080, 1920)
    legacy = {**VIDEO, "tags": {"rotate": "270"}}
    assert parse_media_info(probe_json(legacy)).width == 1080
    anamorphic = {**VIDEO, "width": 720, "height": 576, "sample_aspect_ratio": "64:45"}
    assert parse_media_info(probe_json(anamorphic)).width == 1024


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (probe_json(AUDIO), "no video stream"),
        (probe_json(VIDEO, duration="0.000000"), "duration"),
        (probe_json(VIDEO, duration="N/A"), "duration"),
        (probe_json({**VIDEO, "codec_name": "mjpeg"}, fmt="image2"), "still image"),
        (probe_json({**VIDEO, "codec_name": "png"}, fmt="png_pipe"), "still image"),
        (probe_json({**VIDEO, "width": 0}), "picture size"),
        (probe_json(VIDEO, fmt="hls"), "playlist or file list (hls)"),
        (probe_json(VIDEO, fmt="concat"), "playlist or file list (concat)"),
        (probe_json(VIDEO, fmt="rawvideo"), "not an accepted video container"),
    ],
)
def test_unusable_inputs(data: dict[str, Any], needle: str) -> None:
    with pytest.raises(InputRejected) as err:
        parse_media_info(data)
    assert needle in str(err.value) and err.value.retryable is False


def test_tidy_lines_hides_the_file_url_of_the_input() -> None:
    lines = ["file:/tmp/w/input.mp4: Invalid data found when processing input"]
    assert tidy_lines(lines, "/tmp/w/input.mp4") == "Invalid data found when processing input"
