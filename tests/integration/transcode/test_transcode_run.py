"""TranscodeProcessor.run end to end on real clips: every output checked with ffprobe."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from conveyor.processors.transcode import TranscodeProcessor
from tests.integration.transcode.conftest import (
    ALL_TYPES,
    Harness,
    Recorder,
    ffprobe,
    make_clip,
)

BOXES = {
    "mp4_standard": (848, 480),
    "mp4_smooth": (640, 360),
    "hdlbr_h265": (1920, 1080),
    "lcd_h265": (1280, 720),
    "h265_mute": (1280, 720),
    "custom_mute_preview": (640, 360),
    "thumbnail": (640, 360),
}
CODECS = {
    "mp4_standard": "h264",
    "mp4_smooth": "h264",
    "custom_mute_preview": "h264",
    "thumbnail": "mjpeg",
}


def streams(info: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [s for s in info["streams"] if s["codec_type"] == kind]


def test_all_seven_types_from_one_hd_input(harness: Harness, hd_clip: Path) -> None:
    rec = Recorder()
    outputs = harness.run(hd_clip, ALL_TYPES, key="clips/hd.mp4", recorder=rec)
    assert [o.name for o in outputs] == ALL_TYPES
    src_duration = float(ffprobe(hd_clip)["format"]["duration"])
    for o in outputs:
        assert o.bucket == "output"
        assert o.key == f"clips/hd/{o.name}.{'jpg' if o.name == 'thumbnail' else 'mp4'}"
        path = harness.local(o)
        assert o.size == path.stat().st_size > 0
        info = ffprobe(path)
        (video,) = streams(info, "video")
        audio = streams(info, "audio")
        w, h = int(video["width"]), int(video["height"])
        box_w, box_h = BOXES[o.name]
        assert w <= box_w and h <= box_h, (o.name, w, h)
        assert abs(w / h - 16 / 9) < 0.02, f"{o.name} keeps the aspect: {w}x{h}"
        assert w % 2 == 0 and h % 2 == 0
        assert video["codec_name"] == CODECS.get(o.name, "hevc"), o.name
        assert (o.meta["width"], o.meta["height"], o.meta["codec"]) == (w, h, video["codec_name"])
        if o.name == "thumbnail":
            assert path.read_bytes()[:3] == b"\xff\xd8\xff"
            assert o.content_type == "image/jpeg"
            continue
        assert o.content_type == "video/mp4"
        duration = float(info["format"]["duration"])
        if o.name in ("h265_mute", "custom_mute_preview"):
            assert audio == [], f"{o.name} must be silent"
        else:
            assert [a["codec_name"] for a in audio] == ["aac"], o.name
        if o.name == "custom_mute_preview":
            assert duration < src_duration - 0.5
        else:
            assert duration >= src_duration * 0.9, o.name
    # a 16:9 input gives the promised 848x480 (within 1 % of its aspect), not 848x476
    assert (outputs[0].meta["width"], outputs[0].meta["height"]) == (848, 480)
    assert sorted(harness.published()) == sorted(o.key for o in outputs)
    for phrase in ("Transcode started", "Transcode completed", "Upload completed"):
        assert any(phrase in line for line in rec.logs), (phrase, rec.logs)
    percents = [p for p, _, _ in rec.progress]
    assert percents == sorted(percents) and percents[-1] == 100.0
    assert {"download", "probe", "transcode", "verify", "upload"} <= {
        ph for _, ph, _ in rec.progress
    }


def test_input_without_audio(harness: Harness, qvga_silent_clip: Path) -> None:
    types = ["mp4_standard", "hdlbr_h265", "custom_mute_preview", "thumbnail"]
    outputs = harness.run(qvga_silent_clip, types)
    assert [o.name for o in outputs] == types
    for o in outputs:
        assert streams(ffprobe(harness.local(o)), "audio") == [], o.name
        assert o.meta["audio"] is None


def test_soundtrack_longer_than_the_picture_is_not_truncation(
    harness: Harness, tmp_path: Path
) -> None:
    clip = tmp_path / "long-audio.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=s=320x240:d=1",
         "-f", "lavfi", "-i", "sine=duration=3", "-c:v", "libx264", "-preset", "ultrafast",
         "-pix_fmt", "yuv420p", "-c:a", "aac", str(clip)],
        check=True,
    )  # fmt: skip
    outputs = harness.run(clip, ["mp4_smooth", "h265_mute", "custom_mute_preview"])
    mute = ffprobe(harness.local(outputs[1]))
    assert float(mute["format"]["duration"]) < 1.5
    preview = ffprobe(harness.local(outputs[2]))
    assert float(preview["format"]["duration"]) < 1.0


def test_low_res_input_is_never_upscaled(harness: Harness, qvga_clip: Path) -> None:
    outputs = harness.run(qvga_clip, ALL_TYPES)
    for o in outputs:
        (video,) = streams(ffprobe(harness.local(o)), "video")
        assert (video["width"], video["height"]) == (320, 240), o.name


def test_rotated_and_anamorphic_inputs_come_out_upright_and_square(
    harness: Harness, qvga_clip: Path, tmp_path: Path
) -> None:
    rotated = tmp_path / "rotated.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-i",
            str(qvga_clip),
            "-c",
            "copy",
            "-metadata:s:v:0",
            "rotate=90",
            str(rotated),
        ],
        check=True,
    )
    (out,) = harness.run(rotated, ["mp4_smooth"])
    assert (out.meta["width"], out.meta["height"]) == (240, 320)
    anamorphic = make_clip(
        tmp_path / "anamorphic.mp4", width=480, height=360, audio=False, extra=["-aspect", "16:9"]
    )
    (out,) = harness.run(anamorphic, ["mp4_smooth"])
    (video,) = streams(ffprobe(harness.local(out)), "video")
    assert (video["width"], video["height"]) == (640, 360)
    assert video.get("sample_aspect_ratio", "1:1") in ("1:1", "0:1")


def test_user_profiles_including_a_preview_with_sound(harness: Harness, qvga_clip: Path) -> None:
    settings = SimpleNamespace(
        transcode_profiles={
            "tiny": {"codec": "h264", "max_width": 160, "preset": "veryfast"},
            "teaser": {"codec": "h265", "duration": "preview", "container": "mkv"},
        },
        preview_seconds=0.6,
    )
    outputs = harness.run(qvga_clip, ["tiny", "teaser"], settings=settings)
    tiny, teaser = outputs
    assert (tiny.meta["width"], tiny.meta["height"]) == (160, 120)
    assert teaser.key.endswith("/teaser.mkv") and teaser.content_type == "video/x-matroska"
    info = ffprobe(harness.local(teaser))
    assert [a["codec_name"] for a in streams(info, "audio")] == ["aac"]
    assert float(info["format"]["duration"]) < 1.2


def test_output_prefix(harness: Harness, qvga_clip: Path) -> None:
    outputs = harness.run(qvga_clip, ["thumbnail"], output_prefix="renditions/2024/")
    assert [o.key for o in outputs] == ["renditions/2024/thumbnail.jpg"]


def test_probe_reports_what_this_host_can_do() -> None:
    caps = TranscodeProcessor(None).probe()
    assert caps is not None
    assert caps["h264"] in ("libx264", "h264_nvenc") and caps["h265"] in ("libx265", "hevc_nvenc")
    assert isinstance(caps["nvenc"], bool) and isinstance(caps["nvdec"], bool)
    assert caps["ffmpeg_version"] and caps["types"][:2] == ["mp4_standard", "mp4_smooth"]
    assert TranscodeProcessor(SimpleNamespace(ffmpeg="/nonexistent/ffmpeg")).probe() is None
    assert TranscodeProcessor(SimpleNamespace(ffprobe="/nonexistent/ffprobe")).probe() is None


def test_nvenc_failure_mid_task_falls_back_to_cpu(
    harness: Harness, qvga_clip: Path, tmp_path: Path
) -> None:
    """An ffmpeg whose NVENC passes the one-frame test but fails on the real job
    (what a consumer GPU's session limit looks like) still completes the task."""
    fake = tmp_path / "ffmpeg-with-flaky-nvenc"
    fake.write_text(
        "#!/bin/sh\n"
        "# NVENC passes the one-frame test, fails on a real job; the rest is real ffmpeg\n"
        'case "$*" in\n'
        '  *"-c:v h264_nvenc"*"-f null -"|*"-c:v hevc_nvenc"*"-f null -") exit 0 ;;\n'
        '  *"-c:v h264_nvenc"*|*"-c:v hevc_nvenc"*)\n'
        '    echo "[h264_nvenc @ 0x1] OpenEncodeSessionEx failed: out of memory (10)" >&2\n'
        "    exit 1 ;;\n"
        "esac\n"
        'exec ffmpeg "$@"\n'
    )
    fake.chmod(0o755)
    settings = SimpleNamespace(ffmpeg=str(fake))
    caps = TranscodeProcessor(settings).probe()
    assert caps is not None and caps["h264"] == "h264_nvenc" and caps["nvdec"] is False
    rec = Recorder()
    outputs = harness.run(qvga_clip, ["mp4_smooth", "thumbnail"], settings=settings, recorder=rec)
    assert outputs[0].meta["encoder"] == "libx264"
    assert any("retrying on the CPU encoders" in line for line in rec.logs), rec.logs
