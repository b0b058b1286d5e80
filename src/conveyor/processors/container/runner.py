"""What a runner is given and what it reports; shared by the Docker and local runners.

Runners know nothing about tasks, backends or storage: they start one job,
hand every output line to ``on_line`` as it arrives, stop it when ``stop``
is set (SIGTERM, ``grace`` seconds, SIGKILL) and always clean up after it.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

MAX_LINE = 8192  # longer lines are cut: a log is for people, not for binary dumps

OnLine = Callable[[str, str], None]  # (stream, line)


@dataclass
class RunSpec:
    task_id: str
    attempt: int
    worker_id: str
    command: list[str]
    env: dict[str, str]
    input_dir: Path
    output_dir: Path
    work_dir: Path
    image: str | None = None
    workdir: str | None = None  # inside the container
    outputs: str = "/conveyor/outputs"  # inside the container
    gpus: list[str] = field(default_factory=list)
    cpus: float | None = None
    memory: int | None = None
    shm_size: int | None = None
    network: str | None = None
    grace_s: float = 10.0


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
    def run(self, spec: RunSpec, on_line: OnLine, stop: threading.Event) -> RunResult: ...

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
