"""Bad inputs fail once, with a reason a person understands, and publish nothing."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conveyor.errors import InputRejected
from tests.integration.transcode.conftest import Harness, make_clip


def rejected(harness: Harness, path: Path, types: list[str]) -> InputRejected:
    with pytest.raises(InputRejected) as err:
        harness.run(path, types)
    assert err.value.retryable is False and err.value.code == "invalid_input"
    assert harness.published() == [], "nothing is published for a rejected input"
    return err.value


def test_text_file_named_mp4(harness: Harness, tmp_path: Path) -> None:
    fake = tmp_path / "fake.mp4"
    fake.write_text("this is not a video\n" * 50)
    err = rejected(harness, fake, ["thumbnail"])
    assert str(err).startswith("input is not a readable video: ")
    assert str(tmp_path) not in str(err), "no worker paths in user-facing errors"


def test_empty_file(harness: Harness, tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    assert "empty" in str(rejected(harness, empty, ["thumbnail"]))


def test_truncated_without_index(harness: Harness, qvga_clip: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(qvga_clip.read_bytes()[: qvga_clip.stat().st_size // 2])
    assert "moov atom not found" in str(rejected(harness, cut, ["mp4_smooth"]))


def test_truncated_after_a_faststart_index_decodes_partly(harness: Harness, tmp_path: Path) -> None:
    """The index says 3 s, the data stops half-way: ffmpeg exits 0, the check catches it."""
    whole = make_clip(tmp_path / "whole.mp4", seconds=3.0, faststart=True)
    cut = tmp_path / "cut-fs.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    err = rejected(harness, cut, ["mp4_smooth", "h265_mute", "thumbnail"])
    assert "truncated" in str(err), err


def test_audio_only_file(harness: Harness, tmp_path: Path) -> None:
    song = tmp_path / "song.m4a"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "sine=duration=1",
            "-c:a",
            "aac",
            str(song),
        ],
        check=True,
    )
    assert "no video stream" in str(rejected(harness, song, ["mp4_smooth"]))


def test_still_image_named_mp4(harness: Harness, tmp_path: Path) -> None:
    still = tmp_path / "photo.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=s=320x240:d=0.04",
            "-frames:v",
            "1",
            "-f",
            "image2",
            "-c:v",
            "mjpeg",
            str(still),
        ],
        check=True,
    )
    assert "still image" in str(rejected(harness, still, ["mp4_smooth"]))


def test_missing_input_object(harness: Harness) -> None:
    ctx = harness.context("nope/missing.mp4", {"transcode_types": ["thumbnail"]})
    from conveyor.processors.transcode import TranscodeProcessor

    with pytest.raises(InputRejected, match=r"input object not found: input/nope/missing\.mp4"):
        TranscodeProcessor(None).run(ctx)


@pytest.mark.parametrize("form", ["file://{path}", "{path}", "concat:{path}|{path}"])
def test_playlist_naming_a_worker_file_is_refused(
    harness: Harness, qvga_clip: Path, tmp_path: Path, form: str
) -> None:
    """An .m3u8 listing a file on the worker's disk is not read (issue 13, finding 6)."""
    host = tmp_path / "host-only.ts"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-i", str(qvga_clip), "-c", "copy", "-f", "mpegts", host],
        check=True,
    )
    playlist = tmp_path / "list.m3u8"
    playlist.write_text(
        "#EXTM3U\n#EXT-X-TARGETDURATION:3\n#EXTINF:2.0,\n"
        f"{form.format(path=host)}\n#EXT-X-ENDLIST\n"
    )
    err = rejected(harness, playlist, ["thumbnail"])
    assert "playlist or file list (hls)" in str(err), err
    assert str(host) not in str(err)


def test_ffconcat_list_is_refused(harness: Harness, qvga_clip: Path, tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text(f"ffconcat version 1.0\nfile '{qvga_clip}'\n")
    err = rejected(harness, listing, ["thumbnail"])
    # ffprobe does not take ffconcat for a format on its own: not a readable video
    assert "not a readable video" in str(err) or "file list" in str(err), err
