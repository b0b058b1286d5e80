"""Run the one ffmpeg process: progress out, cancel and timeout in, nothing left behind.

ffmpeg runs as the leader of its own process group so a cancel can kill it
with everything it started, and it is always reaped before we return, so a
cancelled task never leaves an encoder burning a CPU or GPU.  stdout and
stderr are drained by threads: a chatty ffmpeg filling a pipe we are not
reading would stall forever, and the task thread must stay free to notice a
cancel within a fraction of a second.
"""

from __future__ import annotations

import collections
import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from conveyor.errors import ProcessorError, TaskCancelled
from conveyor.processors.procutil import kill_group, popen_group

# Lines in ffmpeg's stderr that blame the input, not the machine: retrying will not help.
INPUT_ERROR_MARKERS = (
    "partial file",
    "moov atom not found",
    "invalid data found when processing input",
    "error while decoding",
    "truncated",
    "corrupt",
)


@dataclass
class ProgressParser:
    """Reads ``-progress`` key=value lines; a block ends at ``progress=continue|end``.

    ``out_time_us`` is preferred.  ``out_time_ms`` is, despite its name, also
    in microseconds in every ffmpeg that prints it, and ``out_time`` is the
    same as HH:MM:SS.micro: any of them will do when the others are missing
    or ``N/A`` (before the first frame is written).
    """

    out_time_s: float | None = None
    speed: float | None = None
    ended: bool = False
    _block: dict[str, str] | None = None

    def feed(self, line: str) -> bool:
        """Take one line; True when it closed a block (a fresh reading is available)."""
        key, sep, value = line.strip().partition("=")
        if not sep:
            return False
        if self._block is None:
            self._block = {}
        if key != "progress":
            self._block[key.strip()] = value.strip()
            return False
        block, self._block = self._block, {}
        t = _out_time(block)
        if t is not None:
            self.out_time_s = max(t, self.out_time_s or 0.0)
        speed = block.get("speed", "").rstrip("x").strip()
        with contextlib.suppress(ValueError):
            self.speed = float(speed)
        self.ended = value.strip() == "end"
        return True

    def percent(self, duration: float) -> float:
        """Share of the input encoded, held below 100 until ffmpeg says ``end``."""
        if self.ended:
            return 100.0
        if not self.out_time_s or duration <= 0:
            return 0.0
        return min(99.0, max(0.0, 100.0 * self.out_time_s / duration))


def _out_time(block: dict[str, str]) -> float | None:
    for key in ("out_time_us", "out_time_ms"):
        try:
            us = int(block.get(key, ""))
        except ValueError:
            continue
        if us >= 0:
            return us / 1_000_000
    text = block.get("out_time", "")
    try:
        h, m, s = text.split(":")
        value = int(h) * 3600 + int(m) * 60 + float(s)
    except ValueError:
        return None
    return value if value >= 0 else None


class Throttle:
    """At most one event per ``interval`` seconds (first one passes at once)."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._last: float | None = None

    def ready(self, force: bool = False) -> bool:
        now = self._clock()
        if force or self._last is None or now - self._last >= self.interval:
            self._last = now
            return True
        return False


@dataclass
class FFmpegResult:
    returncode: int
    stderr_tail: list[str]
    elapsed: float


class FFmpegFailed(ProcessorError):
    """ffmpeg exited non-zero; the message carries the end of its stderr."""

    def __init__(self, returncode: int, tail: list[str]) -> None:
        detail = tidy_lines(tail, keep=5) or "no error output"
        super().__init__(f"ffmpeg failed (exit {returncode}): {detail}", retryable=True)
        self.returncode = returncode
        self.tail = tail


def tidy_lines(lines: list[str], path: str | None = None, keep: int = 3) -> str:
    """ffmpeg error lines fit for a task's error: no ``[mov @ 0x55..]`` noise, no temp paths."""
    out: list[str] = []
    for raw in lines:
        line = raw.strip()
        if path:  # inputs are given to ffmpeg as file: URLs (probe.input_args)
            line = line.replace(f"file:{path}", path)
            line = line.replace(f"{path}: ", "").replace(path, "input")
        if line.startswith("[") and " @ " in line.split("]", 1)[0]:
            line = line.split("] ", 1)[-1]
        if line and line not in out:
            out.append(line)
    return "; ".join(out[-keep:])


def blames_input(lines: list[str]) -> bool:
    text = "\n".join(lines).lower()
    return any(marker in text for marker in INPUT_ERROR_MARKERS)


def _drain_stdout(stream: IO[bytes], parser: ProgressParser, lock: threading.Lock) -> None:
    for raw in iter(stream.readline, b""):
        with lock:
            parser.feed(raw.decode("utf-8", "replace"))


def _drain_stderr(stream: IO[bytes], tail: collections.deque[str]) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip()
        if line:
            tail.append(line)


def _exited(proc: subprocess.Popen[bytes], within: float) -> bool:
    """Wait up to ``within`` s; waking on exit at once keeps short jobs from idling."""
    try:
        proc.wait(timeout=within)
    except subprocess.TimeoutExpired:
        return False
    return True


def run_ffmpeg(
    argv: list[str],
    *,
    duration: float,
    cancel_event: threading.Event,
    timeout_s: float | None = None,
    on_progress: Callable[[float, float | None], None] | None = None,
    env: dict[str, str] | None = None,
    grace_s: float = 2.0,
    poll_s: float = 0.1,
    tail_lines: int = 30,
) -> FFmpegResult:
    """Run ``argv`` to the end, calling ``on_progress(percent, speed)`` from this thread.

    Raises ``TaskCancelled`` when ``cancel_event`` is set, ``ProcessorError``
    (retryable) on timeout, ``FFmpegFailed`` on a non-zero exit.  In every
    case the process group is gone when this returns or raises.
    """
    started = time.monotonic()
    deadline = started + timeout_s if timeout_s else None
    parser = ProgressParser()
    lock = threading.Lock()
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    proc = popen_group(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **env} if env else None,
    )
    assert proc.stdout is not None and proc.stderr is not None
    readers = [
        threading.Thread(target=_drain_stdout, args=(proc.stdout, parser, lock), daemon=True),
        threading.Thread(target=_drain_stderr, args=(proc.stderr, tail), daemon=True),
    ]
    for t in readers:
        t.start()
    last_reported = 0.0  # the caller announces 0 %; report only real movement
    try:
        while not _exited(proc, poll_s):
            if cancel_event.is_set():
                kill_group(proc, grace=grace_s)
                raise TaskCancelled("cancelled while encoding")
            if deadline is not None and time.monotonic() > deadline:
                kill_group(proc, grace=grace_s)
                raise ProcessorError(
                    f"ffmpeg timed out after {timeout_s:g} s", retryable=True, code="timeout"
                )
            with lock:
                pct, speed = parser.percent(duration), parser.speed
            if on_progress is not None and pct != last_reported:
                last_reported = pct
                on_progress(pct, speed)
    finally:
        if proc.poll() is None:  # an exception from on_progress, or KeyboardInterrupt
            kill_group(proc, grace=grace_s)
        for t in readers:
            t.join(timeout=5)
        proc.stdout.close()
        proc.stderr.close()
    result = FFmpegResult(proc.returncode, list(tail), time.monotonic() - started)
    if proc.returncode != 0:
        raise FFmpegFailed(proc.returncode, result.stderr_tail)
    return result
