"""Cancel and timeout kill the ffmpeg process group quickly and leave nothing behind."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from conveyor.errors import ProcessorError, TaskCancelled
from conveyor.processors.transcode import TranscodeProcessor
from tests.integration.transcode.conftest import Harness, Recorder, processes_mentioning

SLOW_TYPES = ["hdlbr_h265", "lcd_h265", "mp4_standard"]


def test_cancel_mid_encode_kills_ffmpeg_within_seconds(harness: Harness, long_clip: Path) -> None:
    cancel = threading.Event()
    encoding = threading.Event()

    def on_progress(percent: float, phase: str) -> None:
        if phase == "transcode" and percent > 3.0:
            encoding.set()

    rec = Recorder(on_progress=on_progress)
    key = harness.upload(long_clip, "long.mp4")
    ctx = harness.context(key, {"transcode_types": SLOW_TYPES}, recorder=rec, cancel_event=cancel)
    marker = str(ctx.workdir)
    outcome: list[BaseException] = []
    finished_at: list[float] = []

    def target() -> None:
        try:
            TranscodeProcessor(None).run(ctx)
        except BaseException as exc:
            outcome.append(exc)
        finally:
            finished_at.append(time.monotonic())

    runner = threading.Thread(target=target)
    runner.start()
    assert encoding.wait(60), f"encoding never made progress: {rec.progress}"
    assert processes_mentioning(marker), "ffmpeg should be running now"
    cancelled_at = time.monotonic()
    cancel.set()
    runner.join(10)
    assert not runner.is_alive()
    assert finished_at[0] - cancelled_at < 5.0, "cancel completes within 5 s"
    assert len(outcome) == 1 and isinstance(outcome[0], TaskCancelled), outcome
    assert processes_mentioning(marker) == [], "no ffmpeg may outlive a cancel"
    assert harness.published() == []


def test_timeout_is_a_retryable_failure_and_kills_ffmpeg(harness: Harness, long_clip: Path) -> None:
    key = harness.upload(long_clip, "long.mp4")
    ctx = harness.context(key, {"transcode_types": SLOW_TYPES}, timeout_s=1.5)
    started = time.monotonic()
    with pytest.raises(ProcessorError) as err:
        TranscodeProcessor(None).run(ctx)
    assert time.monotonic() - started < 8
    assert err.value.retryable and err.value.code == "timeout" and "timed out" in str(err.value)
    assert processes_mentioning(str(ctx.workdir)) == []
    assert harness.published() == []


def test_cancel_before_encoding_starts(harness: Harness, qvga_clip: Path) -> None:
    cancel = threading.Event()
    cancel.set()
    key = harness.upload(qvga_clip, "c.mp4")
    ctx = harness.context(key, {"transcode_types": ["thumbnail"]}, cancel_event=cancel)
    with pytest.raises(TaskCancelled):
        TranscodeProcessor(None).run(ctx)
    assert processes_mentioning(str(ctx.workdir)) == []
