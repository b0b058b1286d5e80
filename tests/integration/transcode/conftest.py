"""Real ffmpeg, real local storage, a processor context like the worker builds.

Clips are generated with lavfi sources, so the suite needs nothing but
ffmpeg; without it the tests skip (or fail when CI=true).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conveyor.models import InputRef, OutputFile, Task
from conveyor.processors.base import ProcessorContext
from conveyor.processors.transcode import TranscodeProcessor
from conveyor.storage.local import LocalBlobStore
from tests.conftest import need_tool, publish, stored_outputs

ALL_TYPES = [
    "mp4_standard",
    "mp4_smooth",
    "hdlbr_h265",
    "lcd_h265",
    "h265_mute",
    "custom_mute_preview",
    "thumbnail",
]


@pytest.fixture(autouse=True)
def _tools() -> None:
    need_tool("ffmpeg", "ffprobe")


def make_clip(
    path: Path,
    *,
    width: int = 320,
    height: int = 240,
    seconds: float = 2.0,
    audio: bool = True,
    faststart: bool = False,
    extra: list[str] | None = None,
) -> Path:
    need_tool("ffmpeg")
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-f", "lavfi"]
    cmd += ["-i", f"testsrc2=size={width}x{height}:rate=25:duration={seconds}"]
    if audio:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}"]
    cmd += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    if audio:
        cmd += ["-c:a", "aac", "-b:a", "64k", "-shortest"]
    if faststart:
        cmd += ["-movflags", "+faststart"]
    cmd += [*(extra or []), str(path)]
    subprocess.run(cmd, check=True)
    return path


def ffprobe(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(json.loads(out))


def processes_mentioning(marker: str) -> list[int]:
    """Live (non-zombie) processes whose command line contains ``marker``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and marker in cmdline:
            pids.append(int(entry))
    return pids


@dataclass
class Recorder:
    logs: list[str] = field(default_factory=list)
    progress: list[tuple[float, str, str]] = field(default_factory=list)
    on_progress: Callable[[float, str], None] | None = None

    def report(self, percent: float, phase: str, message: str) -> None:
        self.progress.append((percent, phase, message))
        if self.on_progress is not None:
            self.on_progress(percent, phase)


@dataclass
class Harness:
    """Uploads an input, runs the processor on it, keeps what it reported."""

    root: Path
    store: LocalBlobStore

    def context(
        self,
        key: str,
        params: dict[str, Any],
        *,
        recorder: Recorder | None = None,
        cancel_event: threading.Event | None = None,
        timeout_s: float | None = None,
    ) -> ProcessorContext:
        workdir = self.root / "work" / f"task-{uuid.uuid4().hex}"
        workdir.mkdir(parents=True)
        rec = recorder or Recorder()
        return ProcessorContext(
            task=Task(input=InputRef(bucket="input", key=key), params=params),
            workdir=workdir,
            storage=self.store,
            output_bucket="output",
            report_progress=rec.report,
            log=rec.logs.append,
            cancel_event=cancel_event or threading.Event(),
            timeout_s=timeout_s,
        )

    def upload(self, path: Path, key: str) -> str:
        self.store.put_file("input", key, path)
        return key

    def run(
        self,
        path: Path,
        types: list[str],
        *,
        key: str | None = None,
        settings: Any = None,
        recorder: Recorder | None = None,
        **params: Any,
    ) -> list[OutputFile]:
        key = self.upload(path, key or f"clips/{path.name}")
        ctx = self.context(key, {"transcode_types": types, **params}, recorder=recorder)
        return publish(self.store, TranscodeProcessor(settings).run(ctx))

    def local(self, out: OutputFile) -> Path:
        path = self.store.local_path(out.bucket, out.key)
        assert path is not None and path.is_file(), out.key
        return path

    def published(self) -> list[str]:
        """Every object in the output bucket, staged ones included."""
        return stored_outputs(self.store)


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(root=tmp_path, store=LocalBlobStore(tmp_path / "buckets"))


@pytest.fixture(scope="session")
def tx_clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("transcode-clips")


@pytest.fixture(scope="session")
def hd_clip(tx_clips: Path) -> Path:
    # 2 s: the preview is its first second (min(preview_seconds, duration / 2)), and seven
    # 1080p encodes (four of them x265) cost a third less than with 3 s
    return make_clip(tx_clips / "hd.mp4", width=1920, height=1080, seconds=2.0)


@pytest.fixture(scope="session")
def qvga_clip(tx_clips: Path) -> Path:
    return make_clip(tx_clips / "qvga.mp4", seconds=2.0)


@pytest.fixture(scope="session")
def qvga_silent_clip(tx_clips: Path) -> Path:
    return make_clip(tx_clips / "silent.mp4", seconds=2.0, audio=False)


@pytest.fixture(scope="session")
def long_clip(tx_clips: Path) -> Path:
    """Long enough that a 640x360 x265 encode is still running when a test cancels it."""
    return make_clip(tx_clips / "long.mp4", width=640, height=360, seconds=60.0)
