"""What a runner is given and what it reports; shared by the Docker and local runners.

Runners know nothing about tasks, backends or storage: they start one job,
hand every output line to ``on_line`` as it arrives, stop it when ``stop``
is set (SIGTERM, ``grace`` seconds, SIGKILL) and always clean up after it.
While the job runs and once it has ended (before anything of it is removed)
they hand an :class:`OutputSource` to the caller, which copies the job's
output folder out of it without following a link (``sandbox``).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from .sandbox import Limits, Snapshot, Want

MAX_LINE = 8192  # longer lines are cut: a log is for people, not for binary dumps

OnLine = Callable[[str, str], None]  # (stream, line)


@dataclass
class RunSpec:
    task_id: str
    attempt: int
    worker_id: str
    command: list[str]
    env: dict[str, str]  # the job's whole environment, but the runner's own variables
    input_dir: Path  # the input files (a private folder of the worker's)
    output_dir: Path  # the checkpoints the output folder starts with (likewise)
    work_dir: Path  # a private scratch folder (the local runner's job runs in it)
    image: str | None = None
    workdir: str | None = None  # inside the container
    outputs: str = "/conveyor/outputs"  # inside the container
    gpus: list[str] = field(default_factory=list)
    cpus: float | None = None
    memory: int | None = None
    shm_size: int | None = None
    network: str | None = None
    grace_s: float = 10.0
    limits: Limits = field(default_factory=lambda: Limits(10 * 1024**3, 100_000))


class OutputSource(ABC):
    """The job's output folder, as the runner lets it be read."""

    # how coarse the files' times are (an engine's archive has whole seconds)
    mtime_granularity: ClassVar[float] = 0.0

    @abstractmethod
    def snapshot(self, dest: Path, limits: Limits, want: Want | None = None) -> Snapshot:
        """Copy the folder's regular files (those ``want`` takes) into ``dest``, a
        private folder; ``OutputsTooLarge`` when the folder is over ``limits``."""


OnSource = Callable[[OutputSource], None]


@dataclass
class RunResult:
    exit_code: int | None  # None when the job never ran to an exit (e.g. stopped)
    oom_killed: bool = False
    stopped: bool = False  # ended because ``stop`` was set
    duration_s: float = 0.0
    detail: str = ""


class RunnerError(Exception):
    """The runner could not start or supervise the job (not the job's own failure)."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class Runner(ABC):
    name: str

    @abstractmethod
    def run(
        self,
        spec: RunSpec,
        on_line: OnLine,
        stop: threading.Event,
        on_running: OnSource | None = None,
        on_exit: OnSource | None = None,
    ) -> RunResult:
        """Run the job; ``on_running`` is called once it has started, ``on_exit`` once
        it has ended (by itself or stopped) and before it is cleaned up."""

    def reap_orphans(self) -> int:
        """Remove what jobs of dead workers left behind; how many were removed."""
        return 0


class LineSplitter:
    """Turns chunks of bytes into whole decoded lines; keeps the unfinished tail."""

    def __init__(self, stream: str, on_line: OnLine) -> None:
        self.stream = stream
        self.on_line = on_line
        self._buf = b""

    def feed(self, chunk: bytes) -> None:
        self._buf += chunk
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > MAX_LINE:
                    self._emit(self._buf)
                    self._buf = b""
                return
            line, self._buf = self._buf[:nl], self._buf[nl + 1 :]
            self._emit(line)

    def close(self) -> None:
        if self._buf:
            self._emit(self._buf)
            self._buf = b""

    def _emit(self, raw: bytes) -> None:
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        if len(text) > MAX_LINE:
            text = text[:MAX_LINE] + " [line cut]"
        self.on_line(self.stream, text)
