"""The encoder probe: an encoder works when ffmpeg exits 0 and reports no error.

A stand-in ``ffmpeg`` script plays back what real builds print, so the rule
is pinned without needing a machine (or container) where each case happens.
"""

from __future__ import annotations

from pathlib import Path

from conveyor.processors.transcode.encoders import encoder_works


def fake_ffmpeg(tmp_path: Path, stderr: str, code: int = 0) -> str:
    script = tmp_path / "ffmpeg"
    script.write_text(f"#!/bin/sh\nprintf '%b' '{stderr}' >&2\nexit {code}\n")
    script.chmod(0o755)
    return str(script)


def test_silent_success_works(tmp_path: Path) -> None:
    assert encoder_works(fake_ffmpeg(tmp_path, ""), "libx265")


def test_libnuma_seccomp_noise_does_not_disqualify_x265(tmp_path: Path) -> None:
    """Docker's default seccomp profile forbids set_mempolicy: x265 still encodes."""
    noise = "set_mempolicy: Operation not permitted\\n" * 6
    assert encoder_works(fake_ffmpeg(tmp_path, noise), "libx265")


def test_an_error_line_disqualifies(tmp_path: Path) -> None:
    lines = (
        "set_mempolicy: Operation not permitted\\n[hevc_nvenc @ 0x1] No capable devices found\\n"
    )
    assert not encoder_works(fake_ffmpeg(tmp_path, lines), "hevc_nvenc")


def test_a_failing_exit_disqualifies(tmp_path: Path) -> None:
    assert not encoder_works(fake_ffmpeg(tmp_path, "", code=1), "libx264")
