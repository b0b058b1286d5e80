"""Fixtures of the fault tests: an API process on the embedded store, a long clip."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FAST_ENV, Server, launch, make_clip, need_tool


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 15 s: a 6 s clip encodes in about 1.8 s on an idle machine, and a test that kills or
    # freezes its worker "above 5 %" could find the task already completed
    return make_clip(
        tmp_path_factory.mktemp("long") / "long.mp4", width=1280, height=720, seconds=15.0
    )


@pytest.fixture(scope="module")
def slow_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 s of 720p: its encode outlasts a cancel's round trip, or a stop's grace, on an
    idle machine.

    A 6 s clip encodes in about 1.8 s there; the progress the API shows can jump from 3 %
    to 79 % between two reports, and a cancel sent then lost the race to completion (CI).
    """
    return make_clip(
        tmp_path_factory.mktemp("cancel") / "long.mp4", width=1280, height=720, seconds=30.0
    )


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Server]:
    need_tool("ffmpeg", "ffprobe")
    srv = launch(tmp_path, "serve", env=FAST_ENV)
    try:
        yield srv
    finally:
        srv.stop()
