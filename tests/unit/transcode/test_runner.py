"""The runner's process handling, with a shell script standing in for ffmpeg.

A script makes the awkward cases cheap and exact: a child that ignores
SIGTERM, a grandchild in the same group, a chatty stderr, a crash.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

import pytest

from conveyor.errors import ProcessorError, TaskCancelled
from conveyor.processors.transcode.runner import FFmpegFailed, run_ffmpeg


def script(body: str) -> tuple[list[str], str]:
    """argv for ``sh -c body`` with a unique marker as ``$0``, to look for in /proc."""
    marker = f"conveyor-test-{uuid.uuid4().hex}"
    return ["sh", "-c", body, marker], marker


def alive_with(marker: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read().decode(errors="replace")
            with open(f"/proc/{entry}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            pids.append(int(entry))
    return pids


def test_progress_is_reported_from_the_callers_thread() -> None:
    argv, _ = script(
        "echo out_time_us=1000000; echo progress=continue; sleep 0.3; "
        "echo out_time_us=3000000; echo speed=2.5x; echo progress=continue; sleep 0.3; "
        "echo out_time_us=4000000; echo progress=end; echo 'some warning' >&2"
    )
    seen: list[tuple[float, float | None, str]] = []
    result = run_ffmpeg(
        argv,
        duration=4.0,
        cancel_event=threading.Event(),
        on_progress=lambda p, s: seen.append((p, s, threading.current_thread().name)),
        poll_s=0.05,
    )
    assert result.returncode == 0 and result.stderr_tail == ["some warning"]
    percents = [p for p, _, _ in seen]
    assert percents == sorted(percents) and 25.0 in percents and 75.0 in percents
    assert (75.0, 2.5) in [(p, s) for p, s, _ in seen]
    assert {name for _, _, name in seen} == {threading.current_thread().name}


def test_nonzero_exit_carries_the_end_of_stderr() -> None:
    argv, _ = script("for i in $(seq 100); do echo line $i >&2; done; exit 3")
    with pytest.raises(FFmpegFailed) as err:
        run_ffmpeg(argv, duration=1.0, cancel_event=threading.Event())
    assert err.value.returncode == 3 and err.value.retryable
    assert "exit 3" in str(err.value) and "line 100" in str(err.value)
    assert "line 1;" not in str(err.value), "only the tail is kept"


def test_big_stderr_does_not_deadlock() -> None:
    argv, _ = script("yes 'a fairly long warning line' | head -n 100000 >&2; echo done >&2")
    result = run_ffmpeg(argv, duration=1.0, cancel_event=threading.Event())
    assert result.stderr_tail[-1] == "done"


def test_cancel_kills_the_whole_group_even_when_sigterm_is_ignored() -> None:
    stubborn = "trap '' TERM; while :; do sleep 0.1; done"
    argv, marker = script(f'sh -c "{stubborn}" "$0" & {stubborn}')
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(TaskCancelled):
        run_ffmpeg(argv, duration=60.0, cancel_event=cancel, grace_s=1.0, poll_s=0.05)
    took = time.monotonic() - started
    assert took < 0.3 + 1.0 + 1.5, f"cancel took {took:.1f} s"
    deadline = time.monotonic() + 2
    while alive_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive_with(marker) == [], "the grandchild went with its group"


def test_timeout_is_retryable_and_kills() -> None:
    argv, marker = script("sleep 60")
    with pytest.raises(ProcessorError) as err:
        run_ffmpeg(argv, duration=1.0, cancel_event=threading.Event(), timeout_s=0.3)
    assert err.value.retryable and err.value.code == "timeout"
    assert alive_with(marker) == []


def test_a_failing_progress_callback_still_reaps_the_child() -> None:
    argv, marker = script("echo out_time_us=500000; echo progress=continue; sleep 60")

    def boom(percent: float, speed: float | None) -> None:
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError):
        run_ffmpeg(argv, duration=1.0, cancel_event=threading.Event(), on_progress=boom)
    assert alive_with(marker) == []
