"""Streaming groups in the table and in the command: one process, rungs never above the
input, keyframes forced at the same instants on every rung, segments of the asked length."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conveyor.processors.transcode import TranscodeProcessor
from conveyor.processors.transcode.command import (
    build_command,
    filter_graph,
    gop_frames,
    ladder_sizes,
    per_stream,
    plan_groups,
    plan_outputs,
)
from conveyor.processors.transcode.encoders import Encoders
from conveyor.processors.transcode.probe import MediaInfo
from conveyor.processors.transcode.profiles import (
    BUILTIN_GROUPS,
    BUILTIN_PROFILES,
    DEFAULT_LADDER,
    ProfileConfigError,
    StreamGroup,
    build_profile_table,
)
from conveyor.processors.transcode.streaming import (
    content_type,
    parse_master,
    parse_media_playlist,
    parse_mpd,
)

CPU = Encoders(h264="libx264", h265="libx265", jpeg="mjpeg", nvdec=False, ffmpeg_version="5.1")
GPU = Encoders(h264="h264_nvenc", h265="hevc_nvenc", jpeg="mjpeg", nvdec=True, ffmpeg_version="5.1")
OUT = Path("/work/out")
HLS, DASH, CMAF = BUILTIN_GROUPS["hls"], BUILTIN_GROUPS["dash"], BUILTIN_GROUPS["cmaf"]


def media(
    width: int = 1280,
    height: int = 720,
    duration: float = 60.0,
    audio: bool = True,
    fps: float | None = 25.0,
) -> MediaInfo:
    return MediaInfo(
        duration=duration,
        width=width,
        height=height,
        video_index=0,
        video_codec="h264",
        fps=fps,
        audio_index=1 if audio else None,
        audio_codec="aac" if audio else None,
        format_name="mov,mp4,m4a,3gp,3g2,mj2",
    )


def command(
    info: MediaInfo,
    groups: list[StreamGroup],
    *,
    profiles: tuple[str, ...] = (),
    encoders: Encoders = CPU,
    segment_seconds: float | None = None,
) -> list[str]:
    plans = plan_outputs(info, [BUILTIN_PROFILES[p] for p in profiles], OUT, 10.0)
    gplans = plan_groups(info, groups, OUT, segment_seconds)
    return build_command("ffmpeg", Path("/work/in.mp4"), info, plans, encoders, gplans)


def section(argv: list[str], output: str) -> list[str]:
    """The arguments of the output file ``output`` (from the previous output path on)."""
    end = argv.index(output)
    starts = [argv.index("-filter_complex") + 1]
    starts += [
        i
        for i, a in enumerate(argv[:end])
        if a.startswith(str(OUT)) and argv[i - 1] != "-hls_segment_filename"
    ]
    return argv[max(starts) + 1 : end]


def value(args: list[str], option: str) -> str:
    return args[args.index(option) + 1]


# -- the table -------------------------------------------------------------------------
def test_builtin_groups_and_the_default_ladder() -> None:
    table = build_profile_table()
    assert [t for t in table if t not in BUILTIN_PROFILES] == ["hls", "dash", "cmaf"]
    assert (HLS.kind, DASH.kind, CMAF.kind) == ("hls", "dash", "cmaf")
    assert (HLS.segments, DASH.segments, CMAF.segments) == ("mpegts", "fmp4", "fmp4")
    assert HLS.entry_points == ("master.m3u8",) and DASH.entry_points == ("manifest.mpd",)
    assert CMAF.entry_points == ("manifest.mpd", "master.m3u8")
    for g in (HLS, DASH, CMAF):
        assert g.ladder == DEFAULT_LADDER and g.segment_seconds == 4.0
        assert (g.audio, g.audio_bitrate, g.audio_channels) == (True, "128k", 2)
    assert [(r.name, r.max_width, r.max_height, r.codec) for r in DEFAULT_LADDER] == [
        ("1080p", 1920, 1080, "h264"),
        ("720p", 1280, 720, "h264"),
        ("540p", 960, 540, "h264"),
        ("360p", 640, 360, "h264"),
        ("234p", 416, 234, "h264"),
    ]
    rates = [int(r.maxrate.rstrip("k")) for r in DEFAULT_LADDER]
    assert rates == sorted(rates, reverse=True), "bitrates fall with the picture"
    assert all(r.bufsize for r in DEFAULT_LADDER)


def test_processor_knows_the_groups() -> None:
    proc = TranscodeProcessor(None)
    assert proc.known_types()[7:] == ["hls", "dash", "cmaf"]
    out = proc.validate(
        {"transcode_types": ["hls", "dash", "thumbnail"], "segment_seconds": 6}, None
    )
    assert out["transcode_types"] == ["hls", "dash", "thumbnail"] and out["segment_seconds"] == 6


def test_user_ladders_in_the_config() -> None:
    table = build_profile_table(
        {
            "hls": {"segment_seconds": 6},  # merged over the built-in group
            "mobile": {
                "kind": "hls",
                "segment_type": "fmp4",
                "audio_bitrate": "64k",
                "ladder": [
                    {"name": "480p", "max_width": 854, "max_height": 480, "maxrate": "1400k"},
                    {"name": "240p", "max_height": 240, "maxrate": "400k", "codec": "h265"},
                ],
            },
            "plain": {"kind": "dash"},  # all defaults: the default ladder
        }
    )
    assert isinstance(table["hls"], StreamGroup) and table["hls"].segment_seconds == 6
    assert table["hls"].ladder == DEFAULT_LADDER
    mobile = table["mobile"]
    assert isinstance(mobile, StreamGroup)
    assert [r.name for r in mobile.ladder] == ["480p", "240p"]
    assert mobile.ladder[0].bufsize == "2800k", "bufsize defaults to two seconds at maxrate"
    assert (mobile.segments, mobile.audio_bitrate) == ("fmp4", "64k")
    plain = table["plain"]
    assert isinstance(plain, StreamGroup) and plain.ladder == DEFAULT_LADDER
    proc = TranscodeProcessor(None)
    proc.profiles = table
    assert proc.known_types()[-2:] == ["mobile", "plain"]


def _rung(**kw: object) -> dict[str, object]:
    return {"name": "a", "maxrate": "1M", **kw}


X265_KEYINT = {"x265-params": "keyint=50"}


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"kind": "smooth"}, "kind: must be one of hls, dash, cmaf"),
        ({"kind": "hls", "ladder": []}, "ladder"),
        ({"kind": "hls", "ladder": [{"name": "a", "max_height": 240}]}, "maxrate"),
        ({"kind": "hls", "ladder": [_rung(extra_options={"g": "9"})]}, "set by Conveyor"),
        ({"kind": "hls", "ladder": [_rung(name="audio")]}, "audio"),
        ({"kind": "hls", "ladder": [_rung(), _rung(maxrate="2M")]}, "differ"),
        ({"kind": "hls", "ladder": [_rung(codec="h265")]}, "fMP4"),
        ({"kind": "cmaf", "ladder": [_rung(codec="h265", cpu_options=X265_KEYINT)]}, "keyframe"),
        ({"kind": "dash", "segment_type": "mpegts"}, "hls only"),
        ({"kind": "hls", "segment_seconds": 0.2}, "segment_seconds"),
        ({"kind": "hls", "codec": "h264"}, "codec"),
        ({"kind": "hls", "ladder": [_rung(name="../x")]}, "name"),
    ],
)
def test_invalid_groups_name_the_problem(raw: dict[str, object], needle: str) -> None:
    with pytest.raises(ProfileConfigError) as err:
        build_profile_table({"mine": raw})
    assert "'mine'" in str(err.value) and needle in str(err.value)


def test_a_profile_cannot_become_half_a_group() -> None:
    with pytest.raises(ProfileConfigError, match="codec"):
        build_profile_table({"hls": {"codec": "h264"}})
    # but a name may be redefined as a group outright
    table = build_profile_table({"mp4_smooth": {"kind": "hls"}})
    assert isinstance(table["mp4_smooth"], StreamGroup)


# -- rungs for an input ------------------------------------------------------------------
def sizes(width: int, height: int, group: StreamGroup = HLS) -> dict[str, tuple[int, int]]:
    kept, _ = ladder_sizes(width, height, group.ladder)
    return {r.name: (w, h) for r, w, h in kept}


def test_rungs_above_the_input_are_dropped() -> None:
    assert sizes(1920, 1080) == {
        "1080p": (1920, 1080),
        "720p": (1280, 720),
        "540p": (960, 540),
        "360p": (640, 360),
        "234p": (416, 234),
    }
    kept, dropped = ladder_sizes(1280, 720, DEFAULT_LADDER)
    assert [r.name for r, _, _ in kept] == ["720p", "540p", "360p", "234p"]
    assert dropped == ["1080p"]
    assert sizes(1280, 720)["720p"] == (1280, 720)
    # between rungs: the input's own size, with the bitrate of the smallest box that holds it
    assert sizes(1000, 562) == {
        "720p": (1000, 562),
        "540p": (960, 540),  # 1000:562 is within 1 % of 16:9: the named size
        "360p": (640, 360),
        "234p": (416, 234),
    }
    # a tiny input: one rung, at its own size, with the lowest rung's bitrate
    assert sizes(320, 180) == {"234p": (320, 180)}
    # cinema scope: the 1080p box still narrows it, so it stays
    assert sizes(1920, 800)["1080p"] == (1920, 800) and sizes(1920, 800)["720p"] == (1280, 532)
    # portrait: boxes are upper bounds, as for every profile
    assert sizes(1080, 1920)["1080p"] == (606, 1080)


def test_ladder_invariants_over_many_inputs() -> None:
    for sw in range(96, 4100, 131):
        for sh in range(96, 2300, 113):
            kept, dropped = ladder_sizes(sw, sh, DEFAULT_LADDER)
            assert kept, (sw, sh)
            pictures = [(w, h) for _, w, h in kept]
            assert len(set(pictures)) == len(pictures), "no two rungs alike"
            assert all(w <= sw and h <= sh for w, h in pictures), "never upscaled"
            assert len(kept) + len(dropped) == len(DEFAULT_LADDER)


@pytest.mark.parametrize(
    ("fps", "seconds", "gop"),
    [(25.0, 4.0, 100), (30000 / 1001, 4.0, 120), (24000 / 1001, 4.0, 96), (60.0, 2.0, 120),
     (None, 4.0, 100), (50.0, 6.0, 300), (30.0, 4.0, 120)],
)  # fmt: skip
def test_gop_is_one_segment_of_frames(fps: float | None, seconds: float, gop: int) -> None:
    assert gop_frames(fps, seconds) == gop


# -- the command -----------------------------------------------------------------------
def test_one_process_one_decode_for_renditions_and_groups() -> None:
    info = media()
    argv = command(info, [HLS, DASH], profiles=("mp4_standard", "thumbnail"))
    assert argv.count("-i") == 1 and argv.count("-filter_complex") == 1
    graph = value(argv, "-filter_complex")
    # 2 renditions + 4 rungs per group (1080p dropped for a 720p input)
    assert graph.startswith("[0:0]split=10[s0][s1]") and graph.count("[0:0]") == 1
    scales = re.findall(r"\[s(\d+)\]scale=(\d+):(\d+)", graph)
    assert [(w, h) for _, w, h in scales][1:] == [  # [s1] is the thumbnail's trim
        ("1280", "720"), ("960", "540"), ("640", "360"), ("416", "234"),
    ] * 2  # fmt: skip
    outputs = [a for a in argv if a.startswith(str(OUT))]
    outputs = [a for a in outputs if argv[argv.index(a) - 1] not in ("-hls_segment_filename",)]
    assert outputs == [
        str(OUT / "mp4_standard.mp4"),
        str(OUT / "thumbnail.jpg"),
        str(OUT / "hls" / "%v" / "index.m3u8"),
        str(OUT / "dash" / "manifest.mpd"),
    ]
    hls = section(argv, str(OUT / "hls" / "%v" / "index.m3u8"))
    assert [hls[i + 1] for i, a in enumerate(hls) if a == "-map"] == [
        "[v2]", "[v3]", "[v4]", "[v5]", "0:1",
    ]  # fmt: skip
    dash = section(argv, str(OUT / "dash" / "manifest.mpd"))
    assert [dash[i + 1] for i, a in enumerate(dash) if a == "-map"] == [
        "[v6]", "[v7]", "[v8]", "[v9]", "0:1",
    ]  # fmt: skip
    assert hls.count("-c:a") == 1 and dash.count("-c:a") == 1, "one AAC rendition per group"


def test_a_group_alone_and_a_one_rung_group() -> None:
    argv = command(media(320, 180), [HLS])
    graph = value(argv, "-filter_complex")
    assert graph == "[0:0]scale=320:180,setsar=1,format=yuv420p[v0]", "no split for one branch"
    hls = section(argv, str(OUT / "hls" / "%v" / "index.m3u8"))
    assert value(hls, "-var_stream_map") == (
        "v:0,name:234p,agroup:audio a:0,name:audio,agroup:audio,default:yes"
    )


def test_keyframes_are_forced_alike_on_every_rung() -> None:
    argv = command(media(1920, 1080), [HLS])
    hls = section(argv, str(OUT / "hls" / "%v" / "index.m3u8"))
    for k, rung in enumerate(DEFAULT_LADDER):
        assert value(hls, f"-c:v:{k}") == "libx264"
        assert value(hls, f"-g:v:{k}") == "100" and value(hls, f"-keyint_min:v:{k}") == "100"
        assert value(hls, f"-force_key_frames:v:{k}") == "expr:gte(t,n_forced*4)"
        assert value(hls, f"-sc_threshold:v:{k}") == "0"
        assert value(hls, f"-forced-idr:v:{k}") == "1"
        assert value(hls, f"-maxrate:v:{k}") == rung.maxrate
        assert value(hls, f"-bufsize:v:{k}") == rung.bufsize
        assert value(hls, f"-crf:v:{k}") == str(rung.crf)
        assert value(hls, f"-preset:v:{k}") == "medium"
        assert value(hls, f"-profile:v:{k}") == rung.extra_options["profile:v"]
    assert "-g" not in hls and "-crf" not in hls, "every encoder option names its stream"


def test_segment_length_from_the_group_or_the_task() -> None:
    argv = command(media(), [HLS, DASH])
    hls = section(argv, str(OUT / "hls" / "%v" / "index.m3u8"))
    dash = section(argv, str(OUT / "dash" / "manifest.mpd"))
    assert value(hls, "-hls_time") == "4" and value(dash, "-seg_duration") == "4"
    argv = command(media(fps=30000 / 1001), [HLS, DASH], segment_seconds=6)
    hls = section(argv, str(OUT / "hls" / "%v" / "index.m3u8"))
    dash = section(argv, str(OUT / "dash" / "manifest.mpd"))
    assert value(hls, "-hls_time") == "6" and value(dash, "-seg_duration") == "6"
    for args in (hls, dash):
        assert value(args, "-g:v:0") == "180"
        assert value(args, "-force_key_frames:v:3") == "expr:gte(t,n_forced*6)"
    two = HLS.model_copy(update={"segment_seconds": 2.5})
    hls = section(command(media(), [two]), str(OUT / "hls" / "%v" / "index.m3u8"))
    assert value(hls, "-hls_time") == "2.5" and value(hls, "-g:v:1") == "63"
    assert value(hls, "-force_key_frames:v:1") == "expr:gte(t,n_forced*2.5)"


def test_hls_muxer_arguments() -> None:
    argv = command(media(), [HLS])
    hls = section(argv, str(OUT / "hls" / "%v" / "index.m3u8"))
    assert value(hls, "-f") == "hls"
    assert value(hls, "-hls_playlist_type") == "vod" and value(hls, "-hls_list_size") == "0"
    assert value(hls, "-hls_segment_type") == "mpegts"
    assert value(hls, "-hls_segment_filename") == str(OUT / "hls" / "%v" / "seg_%05d.ts")
    assert value(hls, "-master_pl_name") == "master.m3u8"
    assert value(hls, "-var_stream_map") == (
        "v:0,name:720p,agroup:audio v:1,name:540p,agroup:audio v:2,name:360p,agroup:audio "
        "v:3,name:234p,agroup:audio a:0,name:audio,agroup:audio,default:yes"
    )
    assert value(hls, "-c:a") == "aac" and value(hls, "-b:a") == "128k"
    fmp4 = HLS.model_copy(update={"segment_type": "fmp4"})
    hls = section(command(media(), [fmp4]), str(OUT / "hls" / "%v" / "index.m3u8"))
    assert value(hls, "-hls_segment_type") == "fmp4"
    assert value(hls, "-hls_segment_filename").endswith("seg_%05d.m4s")
    assert value(hls, "-hls_fmp4_init_filename") == "init.mp4"


def test_input_without_audio_gets_no_audio_rendition() -> None:
    argv = command(media(audio=False), [HLS, CMAF])
    assert "-c:a" not in argv and "0:1" not in argv
    hls = section(argv, str(OUT / "hls" / "%v" / "index.m3u8"))
    assert "agroup" not in value(hls, "-var_stream_map")
    assert "a:0" not in value(hls, "-var_stream_map")
    cmaf = section(argv, str(OUT / "cmaf" / "manifest.mpd"))
    assert value(cmaf, "-adaptation_sets") == "id=0,streams=v"


def test_dash_and_cmaf_muxer_arguments() -> None:
    argv = command(media(), [DASH, CMAF])
    dash = section(argv, str(OUT / "dash" / "manifest.mpd"))
    cmaf = section(argv, str(OUT / "cmaf" / "manifest.mpd"))
    for args in (dash, cmaf):
        assert value(args, "-f") == "dash"
        assert value(args, "-use_template") == "1" and value(args, "-use_timeline") == "1"
        assert value(args, "-adaptation_sets") == "id=0,streams=v id=1,streams=a"
        assert value(args, "-dash_segment_type") == "mp4"
        assert value(args, "-init_seg_name") == "init-$RepresentationID$.$ext$"
    assert "-hls_playlist" not in dash
    assert value(cmaf, "-hls_playlist") == "1" and value(cmaf, "-hls_master_name") == "master.m3u8"
    assert value(cmaf, "-format_options") == "movflags=+cmaf"


def test_nvenc_rungs() -> None:
    argv = command(media(1920, 1080), [HLS], encoders=GPU)
    hls = section(argv, str(OUT / "hls" / "%v" / "index.m3u8"))
    for k in range(5):
        assert value(hls, f"-c:v:{k}") == "h264_nvenc"
        assert value(hls, f"-no-scenecut:v:{k}") == "1" and value(hls, f"-forced-idr:v:{k}") == "1"
        assert value(hls, f"-rc:v:{k}") == "vbr" and value(hls, f"-b:v:{k}") == "0"
        assert value(hls, f"-preset:v:{k}") == "p4"
        assert f"-sc_threshold:v:{k}" not in hls
    assert argv[argv.index("-hwaccel") + 1] == "cuda"


def test_h265_rungs_and_group_presets() -> None:
    table = build_profile_table(
        {
            "hevc": {
                "kind": "cmaf",
                "preset": "veryfast",
                "ladder": [
                    {"name": "hd", "codec": "h265", "max_height": 720, "maxrate": "2M"},
                    {"name": "sd", "max_height": 360, "maxrate": "600k", "preset": "slow"},
                ],
            }
        }
    )
    group = table["hevc"]
    assert isinstance(group, StreamGroup)
    cmaf = section(command(media(), [group]), str(OUT / "hevc" / "manifest.mpd"))
    assert value(cmaf, "-c:v:0") == "libx265" and value(cmaf, "-c:v:1") == "libx264"
    assert value(cmaf, "-x265-params:v:0") == "log-level=error:scenecut=0:open-gop=0"
    assert value(cmaf, "-tag:v:0") == "hvc1"
    assert value(cmaf, "-preset:v:0") == "veryfast" and value(cmaf, "-preset:v:1") == "slow"
    assert value(cmaf, "-sc_threshold:v:1") == "0" and "-sc_threshold:v:0" not in cmaf


def test_per_stream_names_each_option_for_its_stream() -> None:
    assert per_stream(["-c:v", "libx264", "-crf", "23", "-profile:v", "high"], 3) == [
        "-c:v:3", "libx264", "-crf:v:3", "23", "-profile:v:3", "high",
    ]  # fmt: skip
    with pytest.raises(ValueError):
        per_stream(["-c:v"], 0)


def test_graph_numbering_puts_renditions_first() -> None:
    info = media()
    plans = plan_outputs(info, [BUILTIN_PROFILES["mp4_smooth"]], OUT, 10.0)
    groups = plan_groups(info, [DASH], OUT)
    graph = filter_graph(info, plans, groups)
    assert "[s0]scale=640:360,setsar=1,format=yuv420p[v0]" in graph
    assert "[s1]scale=1280:720,setsar=1,format=yuv420p[v1]" in graph
    assert "[s4]scale=416:234,setsar=1,format=yuv420p[v4]" in graph


def test_group_plan_facts() -> None:
    (plan,) = plan_groups(media(1280, 720, duration=60.0), [HLS], OUT)
    assert plan.dir == OUT / "hls" and plan.entry_points == (OUT / "hls" / "master.m3u8",)
    assert [r.name for r in plan.rungs] == ["720p", "540p", "360p", "234p"]
    assert plan.dropped == ("1080p",) and plan.audio and plan.gop == 100
    assert plan.frame_s == pytest.approx(0.04) and plan.duration == 60.0
    assert plan.rungs[0].profile.audio is False


# -- playlists and manifests -------------------------------------------------------------
MASTER = """#EXTM3U
#EXT-X-VERSION:6
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="group_audio",NAME="audio_4",DEFAULT=YES,URI="audio/index.m3u8"
#EXT-X-STREAM-INF:BANDWIDTH=3440800,RESOLUTION=1280x720,CODECS="avc1.64001f,mp4a.40.2",AUDIO="group_audio"
720p/index.m3u8

#EXT-X-STREAM-INF:BANDWIDTH=470800,RESOLUTION=416x234,CODECS="avc1.4d400d,mp4a.40.2",AUDIO="group_audio"
234p/index.m3u8
"""
MEDIA = """#EXTM3U
#EXT-X-VERSION:7
#EXT-X-TARGETDURATION:4
#EXT-X-PLAYLIST-TYPE:VOD
#EXT-X-MAP:URI="init_1.mp4"
#EXTINF:4.000000,
seg_00000.m4s
#EXTINF:2.040000,
seg_00001.m4s
#EXT-X-ENDLIST
"""
MPD = """<?xml version="1.0" encoding="utf-8"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" mediaPresentationDuration="PT10.0S">
  <Period id="0" start="PT0.0S">
    <AdaptationSet id="0" contentType="video" segmentAlignment="true">
      <Representation id="0" mimeType="video/mp4" width="1280" height="720">
        <SegmentTemplate timescale="12800" initialization="init-$RepresentationID$.m4s"
            media="chunk-$RepresentationID$-$Number%05d$.m4s" startNumber="1">
          <SegmentTimeline><S t="0" d="51200" r="1" /><S d="25600" /></SegmentTimeline>
        </SegmentTemplate>
      </Representation>
    </AdaptationSet>
    <AdaptationSet id="1" contentType="audio">
      <Representation id="1" mimeType="audio/mp4">
        <SegmentTemplate timescale="48000" initialization="init-$RepresentationID$.m4s"
            media="chunk-$RepresentationID$-$Number%05d$.m4s" startNumber="1">
          <SegmentTimeline><S t="0" d="188416" /><S d="192512" /></SegmentTimeline>
        </SegmentTemplate>
      </Representation>
    </AdaptationSet>
  </Period>
</MPD>
"""


def test_parse_master_and_media_playlists() -> None:
    variants, media_ = parse_master(MASTER)
    assert [(v.uri, v.attrs["RESOLUTION"]) for v in variants] == [
        ("720p/index.m3u8", "1280x720"),
        ("234p/index.m3u8", "416x234"),
    ]
    assert variants[0].attrs["CODECS"] == "avc1.64001f,mp4a.40.2"
    assert [m.uri for m in media_] == ["audio/index.m3u8"]
    pl = parse_media_playlist(MEDIA)
    assert pl.segments == ["seg_00000.m4s", "seg_00001.m4s"] and pl.durations == [4.0, 2.04]
    assert pl.init == "init_1.mp4" and pl.ended
    assert not parse_media_playlist(MEDIA.replace("#EXT-X-ENDLIST\n", "")).ended


def test_parse_mpd_names_every_segment() -> None:
    video, audio = parse_mpd(MPD)
    assert (video.id, video.content_type, video.width, video.height) == ("0", "video", 1280, 720)
    assert video.init == "init-0.m4s"
    assert video.segments == ["chunk-0-00001.m4s", "chunk-0-00002.m4s", "chunk-0-00003.m4s"]
    assert video.durations == [4.0, 4.0, 2.0]
    assert (audio.content_type, audio.width, audio.segments[-1]) == (
        "audio",
        None,
        "chunk-1-00002.m4s",
    )


def test_content_types() -> None:
    from pathlib import PurePosixPath as P

    assert content_type(P("master.m3u8"), "master") == "application/vnd.apple.mpegurl"
    assert content_type(P("manifest.mpd"), "manifest") == "application/dash+xml"
    assert content_type(P("720p/seg_00001.ts"), "segment") == "video/mp2t"
    assert content_type(P("chunk-0-00001.m4s"), "segment") == "video/iso.segment"
    assert content_type(P("init-0.m4s"), "init") == "video/mp4"
    assert content_type(P("720p/init_0.mp4"), "init") == "video/mp4"
