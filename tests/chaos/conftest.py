"""Fixtures of the fault tests: an API process on the embedded store, a long clip."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FAST_ENV, Server, launch, make_clip, need_tool


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(
        tmp_path_factory.mktemp("long") / "long.mp4", width=1280, height=720, seconds=6.0
    )


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Server]:
    need_tool("ffmpeg", "ffprobe")
    srv = launch(tmp_path, "serve", env=FAST_ENV)
    try:
        yield srv
    finally:
        srv.stop()
