"""Streaming groups through TranscodeProcessor.run on generated clips: one ffmpeg process,
playlists and segments checked, staged all or nothing and published under the prefix."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import conveyor.processors.transcode as transcode_module
from conveyor.errors import ProcessorError
from conveyor.models import OutputFile
from conveyor.processors.transcode import TranscodeProcessor
from conveyor.storage.local import LocalBlobStore
from tests.integration.transcode import streams as st
from tests.integration.transcode.conftest import Harness, make_clip

# the built-in groups at the fastest preset: the ladder, GOP and muxers are the defaults'
# (what these tests check), the x264 effort is not
FAST = {name: {"preset": "ultrafast"} for name in ("hls", "dash", "cmaf")}
SEG = 4.0
FRAME = 1 / 25


@pytest.fixture(scope="module")
def hd720(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8.2 s: two whole segments and a short one."""
    clip = tmp_path_factory.mktemp("streaming") / "talk.mp4"
    return make_clip(clip, width=1280, height=720, seconds=8.2)


@pytest.fixture
def ffmpeg_runs(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every ffmpeg process the processor starts."""
    runs: list[list[str]] = []
    real = transcode_module.run_ffmpeg  # type: ignore[attr-defined]

    def counting(argv: list[str], **kw: Any) -> Any:
        runs.append(argv)
        return real(argv, **kw)

    monkeypatch.setattr(transcode_module, "run_ffmpeg", counting)
    return runs


def by_name(outputs: list[OutputFile]) -> dict[str, OutputFile]:
    return {o.name: o for o in outputs}


def test_hls_dash_cmaf_and_files_from_one_process(
    harness: Harness, hd720: Path, ffmpeg_runs: list[list[str]]
) -> None:
    types = ["mp4_standard", "hls", "dash", "cmaf", "thumbnail"]
    outputs = harness.run(
        hd720, types, key="talks/talk.mp4", settings=SimpleNamespace(transcode_profiles=FAST)
    )
    assert len(ffmpeg_runs) == 1, "one ffmpeg process for every rendition and group"
    assert ffmpeg_runs[0].count("-i") == 1
    outs = by_name(outputs)
    root = harness.store.local_path("output", "talks/talk")
    assert root is not None
    # the seed types as before, and mp4_standard at the size users were promised
    assert (outs["mp4_standard"].meta["width"], outs["mp4_standard"].meta["height"]) == (848, 480)
    assert outs["thumbnail"].key == "talks/talk/thumbnail.jpg"
    # every file under <prefix>/<group>/, published, nothing left in staging
    assert sorted(harness.published()) == sorted(o.key for o in outputs)
    for o in outputs:
        assert o.staged_key is None and o.size == harness.local(o).stat().st_size > 0
        group = o.name.split("/")[0]
        if group in ("hls", "dash", "cmaf"):
            assert o.key == f"talks/talk/{o.name}" and o.meta["group"] == group
    types_seen = {Path(o.key).suffix: o.content_type for o in outputs if "/" in o.name}
    assert types_seen[".m3u8"] == "application/vnd.apple.mpegurl"
    assert types_seen[".mpd"] == "application/dash+xml"
    assert types_seen[".ts"] == "video/mp2t"
    assert {o.content_type for o in outputs if o.key.endswith(".m4s")} == {
        "video/mp4",  # init segments
        "video/iso.segment",
    }
    # the entry points say what is there: 1080p is above a 720p input
    master = outs["hls/master.m3u8"].meta
    assert master["role"] == "master" and master["dropped"] == ["1080p"]
    assert [r["name"] for r in master["renditions"]] == ["720p", "540p", "360p", "234p", "audio"]
    assert master["segment_seconds"] == SEG and master["gop_frames"] == 100
    assert master["longest_segment"] <= SEG + FRAME
    assert outs["dash/manifest.mpd"].meta["role"] == "manifest"
    assert set(outs["cmaf/master.m3u8"].meta) >= {"renditions", "dropped", "encode_speed"}
    assert "encode_speed" not in outs["hls/720p/seg_00000.ts"].meta, "segments stay small"

    source = st.duration(hd720)
    sizes = [(1280, 720), (960, 540), (640, 360), (416, 234)]
    # HLS: the master lists the four rungs and the audio; every variant plays whole
    variants, media = st.master_variants(root / "hls" / "master.m3u8")
    assert [v.attrs["RESOLUTION"] for v in variants] == [f"{w}x{h}" for w, h in sizes]
    assert media == ["audio/index.m3u8"]
    hls_keys = []
    for v in variants:
        playlist = root / "hls" / v.uri
        assert abs(st.duration(playlist) - source) <= FRAME, v.uri
        assert max(st.extinf(playlist)) <= SEG + FRAME
        assert len(st.extinf(playlist)) == 3
        hls_keys.append(st.keyframes(playlist))
    assert all(k == hls_keys[0] for k in hls_keys), hls_keys
    assert st.relative(hls_keys[0]) == [0.0, 4.0, 8.0]
    audio = root / "hls" / "audio" / "index.m3u8"
    assert [s["codec_name"] for s in st.streams(audio)] == ["aac"]
    assert max(st.extinf(audio)) <= SEG + FRAME
    # DASH and CMAF: one manifest, the same rungs, the same keyframes
    for group in ("dash", "cmaf"):
        manifest = root / group / "manifest.mpd"
        assert st.mpd_sizes(manifest) == sizes
        for rep, length in st.mpd_durations(manifest).items():
            assert abs(length - source) <= FRAME, (group, rep, length)
        for rep, durations in st.mpd_segment_durations(manifest).items():
            assert max(durations) <= SEG + FRAME, (group, rep, durations)
    manifest = root / "dash" / "manifest.mpd"
    keys = [st.relative(st.keyframes(manifest, f"v:{k}")) for k in range(4)]
    assert keys == [[0.0, 4.0, 8.0]] * 4, keys
    # CMAF: the HLS side names the DASH side's segments, not copies of them.  Keyframes
    # are read through it: ffmpeg 5.1's DASH demuxer misplaces the last segment of
    # fragments without an edit list (movflags +cmaf) by a frame; the files are right.
    cmaf = root / "cmaf"
    variants, media = st.master_variants(cmaf / "master.m3u8")
    assert [v.attrs["RESOLUTION"] for v in variants] == [f"{w}x{h}" for w, h in sizes]
    assert media == [f"media_{len(sizes)}.m3u8"]
    for v in variants:
        names = st.referenced(cmaf / v.uri)
        assert names and all((cmaf / n).is_file() for n in names)
        assert all(n.startswith(("chunk-", "init-")) for n in names)
        assert abs(st.duration(cmaf / v.uri) - source) <= FRAME
        assert max(st.extinf(cmaf / v.uri)) <= SEG + FRAME
        assert st.relative(st.keyframes(cmaf / v.uri)) == [0.0, 4.0, 8.0], v.uri
    assert not [p for p in cmaf.iterdir() if p.suffix == ".ts"]


def test_small_silent_input_one_rung_fmp4_and_task_segment_length(
    harness: Harness, tmp_path: Path, ffmpeg_runs: list[list[str]]
) -> None:
    clip = make_clip(tmp_path / "tiny.mp4", width=320, height=180, seconds=5.0, audio=False)
    settings = SimpleNamespace(
        transcode_profiles={
            "hls_fmp4": {"kind": "hls", "segment_type": "fmp4", "preset": "veryfast"},
            "dash": {"preset": "veryfast"},
        }
    )
    outputs = harness.run(clip, ["hls_fmp4", "dash"], settings=settings, segment_seconds=2)
    assert len(ffmpeg_runs) == 1
    outs = by_name(outputs)
    master = outs["hls_fmp4/master.m3u8"].meta
    # every rung's box holds 320x180: the lowest one stays, at the input's own size
    assert master["renditions"] == [
        {
            "name": "234p",
            "codec": "h264",
            "width": 320,
            "height": 180,
            "playlist": "234p/index.m3u8",
        }
    ]
    assert master["dropped"] == ["1080p", "720p", "540p", "360p"]
    assert master["segment_seconds"] == 2 and master["gop_frames"] == 50
    root = harness.store.local_path("output", "clips/tiny")
    assert root is not None
    variants, media = st.master_variants(root / "hls_fmp4" / "master.m3u8")
    assert [v.uri for v in variants] == ["234p/index.m3u8"] and media == [], "no audio"
    playlist = root / "hls_fmp4" / "234p" / "index.m3u8"
    assert st.extinf(playlist) == [2.0, 2.0, 1.0]
    assert st.relative(st.keyframes(playlist)) == [0.0, 2.0, 4.0]
    assert outs["hls_fmp4/234p/init.mp4"].content_type == "video/mp4"
    assert outs["hls_fmp4/234p/seg_00000.m4s"].content_type == "video/iso.segment"
    manifest = root / "dash" / "manifest.mpd"
    assert [s["codec_type"] for s in st.streams(manifest)] == ["video"]
    assert st.mpd_segment_durations(manifest) == {"0": [2.0, 2.0, 1.0]}


class FailingStore(LocalBlobStore):
    """Fails the ``fail_at``-th put (counting from 1), as a store outage part-way would."""

    def __init__(self, root: Path, fail_at: int) -> None:
        super().__init__(root)
        self.fail_at = fail_at
        self.puts = 0
        self._lock = threading.Lock()  # puts run side by side

    def put_file(self, bucket: str, key: str, path: Path, content_type: str | None = None) -> Any:
        with self._lock:
            self.puts += 1
            n = self.puts
        if n == self.fail_at:
            raise OSError("connection reset while uploading")
        return super().put_file(bucket, key, path, content_type)


def test_a_failed_upload_part_way_leaves_nothing_staged(tmp_path: Path, hd720: Path) -> None:
    store = FailingStore(tmp_path / "buckets", fail_at=12)
    harness = Harness(root=tmp_path, store=store)
    settings = SimpleNamespace(transcode_profiles={"hls": {"preset": "ultrafast"}})
    with pytest.raises(ProcessorError) as err:
        harness.run(hd720, ["mp4_smooth", "hls"], settings=settings)
    assert err.value.retryable and "upload failed" in err.value.message
    assert store.puts >= 12
    assert harness.published() == [], "every staged file was removed again"


def test_unknown_group_on_this_worker_is_refused(harness: Harness, hd720: Path) -> None:
    with pytest.raises(ProcessorError, match="unknown transcode type 'mobile'"):
        harness.run(hd720, ["mobile"])
    proc = TranscodeProcessor(SimpleNamespace(transcode_profiles={"mobile": {"kind": "hls"}}))
    assert "mobile" in proc.known_types()
