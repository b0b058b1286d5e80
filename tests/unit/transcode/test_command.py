"""The pure command builder: one process, one decode, the right branch per rendition."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from conveyor.processors.transcode.command import (
    build_command,
    filter_graph,
    fit_within,
    plan_outputs,
    preview_length,
    still_time,
)
from conveyor.processors.transcode.encoders import Encoders
from conveyor.processors.transcode.probe import MediaInfo
from conveyor.processors.transcode.profiles import BUILTIN_PROFILES, build_profile_table

CPU = Encoders(h264="libx264", h265="libx265", jpeg="mjpeg", nvdec=False, ffmpeg_version="5.1")
GPU = Encoders(h264="h264_nvenc", h265="hevc_nvenc", jpeg="mjpeg", nvdec=True, ffmpeg_version="5.1")
ALL = list(BUILTIN_PROFILES.values())
OUT = Path("/work/out")


def media(
    width: int = 1920, height: int = 1080, duration: float = 30.0, audio: bool = True
) -> MediaInfo:
    return MediaInfo(
        duration=duration,
        width=width,
        height=height,
        video_index=0,
        video_codec="h264",
        fps=25.0,
        audio_index=1 if audio else None,
        audio_codec="aac" if audio else None,
        format_name="mov,mp4,m4a,3gp,3g2,mj2",
    )


def outputs_of(argv: list[str]) -> list[str]:
    return [a for a in argv if a.startswith(str(OUT))]


def options_for(argv: list[str], output: str) -> list[str]:
    """The arguments between the previous output path (or the graph) and ``output``."""
    end = argv.index(output)
    graph_at = argv.index("-filter_complex") + 1
    start = max([graph_at, *(i for i, a in enumerate(argv[:end]) if a.startswith(str(OUT)))])
    return argv[start + 1 : end]


# -- geometry ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("src", "box", "expected"),
    [
        ((1920, 1080), (848, 480), (848, 480)),  # within 1 % of the box's aspect: its size
        ((1280, 720), (848, 480), (848, 480)),
        ((854, 480), (848, 480), (848, 480)),
        ((850, 478), (848, 480), (848, 476)),  # snapping would stretch 478 up to 480: no
        ((640, 360), (848, 480), (640, 360)),  # smaller than the box: never upscaled
        ((1440, 1080), (848, 480), (640, 480)),  # 4:3 is no near miss of 848:480
        ((1920, 1040), (848, 480), (848, 458)),  # 1.846 is 4.5 % off: fitted, not snapped
        ((1920, 1080), (416, 234), (416, 234)),
        ((1920, 1080), (853, 480), (852, 480)),  # an odd box snaps to an even size
        ((1920, 1080), (640, 360), (640, 360)),
        ((1920, 1080), (1920, 1080), (1920, 1080)),
        ((3840, 2160), (1280, 720), (1280, 720)),
        ((320, 240), (848, 480), (320, 240)),  # never upscaled
        ((321, 241), (848, 480), (320, 240)),  # odd sizes made even, downwards
        ((1080, 1920), (848, 480), (270, 480)),  # portrait fits by height
        ((1440, 1080), (640, 360), (480, 360)),  # 4:3 stays 4:3
        ((1000, 500), (None, None), (1000, 500)),
    ],
)
def test_fit_within(
    src: tuple[int, int], box: tuple[int | None, int | None], expected: tuple[int, int]
) -> None:
    assert fit_within(*src, *box) == expected


def test_fit_within_invariants_over_many_sizes() -> None:
    for sw in range(64, 4000, 97):
        for sh in range(48, 2300, 89):
            for bw, bh in ((848, 480), (640, 360), (1280, 720), (1920, 1080), (416, 234)):
                w, h = fit_within(sw, sh, bw, bh)
                assert w % 2 == 0 and h % 2 == 0
                assert w <= max(2, min(sw, bw)) and h <= max(2, min(sh, bh)), "no upscale"
                # aspect kept to within the rounding of one even step on each side, or
                # within the 1 % a snap to the box's own size may stretch it
                slack = max(2 / h + 2 / w, 0.01)
                assert abs(w / h - sw / sh) <= (sw / sh) * slack + 1e-9


def test_snap_to_the_named_size_only_within_one_percent() -> None:
    """848x480 is 0.6 % narrower than 16:9: 16:9 inputs get 848x480, as promised."""
    assert fit_within(1920, 1080, 848, 480) == (848, 480)
    # 1 % either side of 848:480 snaps; just beyond does not
    assert fit_within(1712, 960, 848, 480) == (848, 480)  # +0.94 %
    assert fit_within(1680, 960, 848, 480) == (848, 480)  # -0.94 %
    assert fit_within(1716, 960, 848, 480) != (848, 480)  # +1.2 %
    assert fit_within(1676, 960, 848, 480) != (848, 480)  # -1.2 %


def test_preview_is_always_shorter_than_the_input() -> None:
    assert preview_length(60.0, 10.0) == 10.0
    assert preview_length(8.0, 10.0) == 4.0
    for d in (0.1, 1.0, 3.0, 19.9, 20.0, 3600.0):
        assert 0 < preview_length(d, 10.0) < d


def test_still_time_is_ten_percent_but_inside_the_video() -> None:
    assert still_time(media(duration=30.0), 0.1) == pytest.approx(3.0)
    assert still_time(media(duration=0.04), 0.1) == 0.0


# -- the command ------------------------------------------------------------------------
def test_one_process_one_input_every_output() -> None:
    info = media()
    plans = plan_outputs(info, ALL, OUT, 10.0)
    argv = build_command("ffmpeg", Path("/work/in.mp4"), info, plans, CPU)
    assert argv[0] == "ffmpeg"
    assert argv.count("-i") == 1 and argv.count("-filter_complex") == 1
    for flag in ("-hide_banner", "-nostats", "-y", "-nostdin"):
        assert flag in argv
    assert argv[argv.index("-progress") + 1] == "pipe:1"
    assert argv[argv.index("-loglevel") + 1] == "error"
    assert outputs_of(argv) == [str(OUT / f"{p.name}.{p.ext}") for p in ALL]
    graph = argv[argv.index("-filter_complex") + 1]
    assert graph.count("split=7") == 1 and graph.startswith(
        "[0:0]split=7[s0][s1][s2][s3][s4][s5][s6];"
    )
    assert graph.count("[0:0]") == 1, "the video is decoded once"
    assert "-hwaccel" not in argv


def test_each_rendition_gets_its_size_codec_and_audio_rule() -> None:
    info = media()
    plans = plan_outputs(info, ALL, OUT, 10.0)
    argv = build_command("ffmpeg", Path("/work/in.mp4"), info, plans, CPU)
    graph = argv[argv.index("-filter_complex") + 1]
    for i, plan in enumerate(plans):
        chain = re.search(rf"\[s{i}\](.*?)\[v{i}\]", graph)
        assert chain, plan.name
        assert f"scale={plan.width}:{plan.height},setsar=1" in chain.group(1)
        opts = options_for(argv, str(plan.path))
        assert opts[:2] == ["-map", f"[v{i}]"]
        enc = opts[opts.index("-c:v") + 1]
        assert enc == {"h264": "libx264", "h265": "libx265", "jpeg": "mjpeg"}[plan.profile.codec]
        if plan.profile.audio:
            assert "0:1" in opts and "-an" not in opts
            assert opts[opts.index("-c:a") + 1] == "aac"
        else:
            assert "0:1" not in opts and "-an" in opts
        if plan.profile.ext == "mp4":
            assert opts[opts.index("-movflags") + 1] == "+faststart"
    thumb = options_for(argv, str(OUT / "thumbnail.jpg"))
    assert thumb[thumb.index("-frames:v") + 1] == "1"
    assert "trim=start=3.000,setpts=PTS-STARTPTS,trim=end_frame=1" in graph
    assert "[s5]trim=duration=10.000,setpts=PTS-STARTPTS,scale=640:360" in graph
    x265 = options_for(argv, str(OUT / "lcd_h265.mp4"))
    assert x265[x265.index("-x265-params") + 1].startswith("log-level=error:aq-mode=3")
    assert x265[x265.index("-tag:v") + 1] == "hvc1"


def test_input_without_audio_maps_no_audio_at_all() -> None:
    info = media(audio=False)
    plans = plan_outputs(info, ALL, OUT, 10.0)
    argv = build_command("ffmpeg", Path("/work/in.mp4"), info, plans, CPU)
    assert not any(a.startswith("0:") for a in argv), "no stream map to a missing audio track"
    assert "-c:a" not in argv
    assert argv.count("-an") == len(plans)
    assert all(not p.audio for p in plans)


def test_low_res_input_is_never_upscaled() -> None:
    info = media(width=320, height=240)
    plans = plan_outputs(info, ALL, OUT, 10.0)
    graph = filter_graph(info, plans)
    sizes = {(int(w), int(h)) for w, h in re.findall(r"scale=(\d+):(\d+)", graph)}
    assert sizes == {(320, 240)}


def test_single_output_needs_no_split() -> None:
    info = media()
    plans = plan_outputs(info, [BUILTIN_PROFILES["mp4_smooth"]], OUT, 10.0)
    graph = filter_graph(info, plans)
    assert "split" not in graph and graph.startswith("[0:0]scale=640:360")


def test_preview_with_audio_trims_audio_in_the_graph() -> None:
    table = build_profile_table({"teaser": {"codec": "h264", "duration": "preview"}})
    info = media(duration=6.0)
    plans = plan_outputs(info, [table["mp4_smooth"], table["teaser"]], OUT, 10.0)
    argv = build_command("ffmpeg", Path("/work/in.mp4"), info, plans, CPU)
    graph = argv[argv.index("-filter_complex") + 1]
    assert "[0:1]atrim=duration=3.000,asetpts=PTS-STARTPTS[a1]" in graph
    assert options_for(argv, str(OUT / "teaser.mp4"))[:4] == ["-map", "[v1]", "-map", "[a1]"]
    assert options_for(argv, str(OUT / "mp4_smooth.mp4"))[:4] == ["-map", "[v0]", "-map", "0:1"]


def test_nvenc_arguments() -> None:
    info = media()
    plans = plan_outputs(info, ALL, OUT, 10.0)
    argv = build_command("ffmpeg", Path("/work/in.mp4"), info, plans, GPU)
    assert argv.index("-hwaccel") < argv.index("-i") and argv[argv.index("-hwaccel") + 1] == "cuda"
    hevc = options_for(argv, str(OUT / "lcd_h265.mp4"))
    assert hevc[hevc.index("-c:v") + 1] == "hevc_nvenc"
    for opt, val in (("-preset", "p4"), ("-rc", "vbr"), ("-cq", "24"), ("-b:v", "0")):
        assert hevc[hevc.index(opt) + 1] == val
    assert "-x265-params" not in hevc and "-spatial-aq" in hevc
    h264 = options_for(argv, str(OUT / "mp4_standard.mp4"))
    assert h264[h264.index("-c:v") + 1] == "h264_nvenc" and "-profile:v" in h264


def test_nvdec_only_for_codecs_it_decodes() -> None:
    info = replace(media(), video_codec="prores")
    plans = plan_outputs(info, ALL, OUT, 10.0)
    assert "-hwaccel" not in build_command("ffmpeg", Path("/in.mov"), info, plans, GPU)


def test_no_plans_is_a_bug() -> None:
    with pytest.raises(ValueError):
        build_command("ffmpeg", Path("/in.mp4"), media(), [], CPU)


def test_cpu_fallback_and_gpu_error_detection() -> None:
    from conveyor.processors.transcode.encoders import gpu_failure

    cpu = GPU.cpu_only()
    assert (cpu.h264, cpu.h265, cpu.jpeg, cpu.nvdec, cpu.uses_gpu) == (
        "libx264",
        "libx265",
        "mjpeg",
        False,
        False,
    )
    assert CPU.cpu_only() == CPU
    assert gpu_failure(["[hevc_nvenc @ 0x5] OpenEncodeSessionEx failed: out of memory (10)"])
    assert not gpu_failure(["stream 0, offset 0x2690bb: partial file"])


def test_the_input_is_read_as_a_file_with_the_probed_demuxer_only() -> None:
    """No playlist can reach the worker's disk: file protocol, one container demuxer, forced."""
    info = media()
    plans = plan_outputs(info, ALL, OUT, 10.0)
    argv = build_command("ffmpeg", Path("/work/in.mp4"), info, plans, CPU)
    before = argv[: argv.index("-i") + 2]
    assert before[-1] == "file:/work/in.mp4"
    assert before[before.index("-protocol_whitelist") + 1] == "file"
    assert before[before.index("-format_whitelist") + 1] == "mov"
    assert before[before.index("-f") + 1] == "mov"
    mkv = replace(info, format_name="matroska,webm")
    argv = build_command("ffmpeg", Path("/work/in.webm"), mkv, plans, CPU)
    assert argv[argv.index("-f") + 1] == "matroska"
