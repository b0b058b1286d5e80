"""The local-process runner: the same job without an engine, for hosts with none.

The command runs as the leader of its own session, so a cancel or timeout
can signal every process it spawned; it dies with the worker thread
(PDEATHSIG), gets only the environment it asked for (never the worker's, which
may hold credentials), and an address-space limit when ``memory`` is set.

PDEATHSIG reaches the job's first process only: its children outlive a
worker killed with SIGKILL. So each job carries a random token in its
environment (inherited by everything it starts, even a process that left its
session) and is recorded in a state folder; the next worker on the host kills
every process holding the token of a job whose worker is gone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import secrets
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import IO

from conveyor.procutil import die_with_parent, kill_group

from .runner import LineSplitter, OnLine, Runner, RunnerError, RunResult, RunSpec

log = logging.getLogger(__name__)

BASE_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "PYTHONPATH", "VIRTUAL_ENV")


# bandit B105: an environment variable name
TOKEN_VAR = "CONVEYOR_JOB_TOKEN"  # nosec B105


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holders(token: str) -> list[int]:
    """Live processes whose environment carries ``token`` (read from /proc)."""
    needle = f"{TOKEN_VAR}={token}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                if needle in fh.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue
    return found


def kill_token(token: str) -> int:
    """SIGKILL every process of a job, wherever it went; how many there were."""
    pids = holders(token)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


class LocalRunner(Runner):
    name = "local"

    def __init__(self, state_dir: Path | None = None) -> None:
        self.state_dir = state_dir
        self._active: set[str] = set()
        self._lock = threading.Lock()

    def _record(self, token: str, spec: RunSpec) -> Path | None:
        if self.state_dir is None:
            return None
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path = self.state_dir / f"{token}.json"
        info = {"worker_pid": os.getpid(), "task_id": spec.task_id, "attempt": spec.attempt}
        path.write_text(json.dumps(info))
        return path

    def reap_orphans(self) -> int:
        """Kill what jobs of dead workers (SIGKILLed, so no cleanup) left running."""
        if self.state_dir is None or not self.state_dir.is_dir():
            return 0
        killed = 0
        for path in self.state_dir.glob("*.json"):
            token = path.stem
            try:
                info = json.loads(path.read_text())
                pid = int(info.get("worker_pid", 0))
            except (OSError, ValueError):
                continue
            with self._lock:
                ours = token in self._active
            if ours or (pid != os.getpid() and _pid_alive(pid)):
                continue
            n = kill_token(token)
            if n:
                log.warning(
                    "Killed %d orphan process(es) of task %s attempt %s (worker %d gone)",
                    n,
                    info.get("task_id"),
                    info.get("attempt"),
                    pid,
                )
            killed += n
            path.unlink(missing_ok=True)
        return killed

    def run(self, spec: RunSpec, on_line: OnLine, stop: threading.Event) -> RunResult:
        token = secrets.token_hex(16)
        with self._lock:
            self._active.add(token)
        record = self._record(token, spec)
        try:
            return self._run(spec, on_line, stop, token)
        finally:
            kill_token(token)  # a child that left the session is still the job's
            if record is not None:
                record.unlink(missing_ok=True)
            with self._lock:
                self._active.discard(token)

    def _run(self, spec: RunSpec, on_line: OnLine, stop: threading.Event, token: str) -> RunResult:
        env = {k: os.environ[k] for k in BASE_ENV if k in os.environ}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env["HOME"] = str(spec.work_dir)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(spec.gpus)  # "" hides every GPU
        env.update(spec.env)
        env[TOKEN_VAR] = token
        memory = spec.memory

        def preexec() -> None:
            die_with_parent()
            if memory:
                resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                spec.command,
                cwd=spec.work_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=preexec,
            )
        except OSError as exc:
            raise RunnerError(f"cannot start {spec.command[0]!r}: {exc}", retryable=False) from exc
        readers = [
            threading.Thread(target=_pump, args=(pipe, LineSplitter(name, on_line)), daemon=True)
            for pipe, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr"))
        ]
        for t in readers:
            t.start()
        stopped = False
        while proc.poll() is None:
            if stop.wait(0.1):
                stopped = True
                kill_group(proc, grace=spec.grace_s)
                break
        proc.wait()
        # whatever the outcome, nothing of the job's process group may outlive it
        _kill_pgid(proc.pid)
        for t in readers:
            t.join(timeout=5)
        rc = proc.returncode
        if rc < 0:  # killed by a signal: report it as a shell would
            rc = 128 - rc
        return RunResult(
            exit_code=None if stopped else rc,
            oom_killed=False,
            stopped=stopped,
            duration_s=time.monotonic() - started,
        )


def _pump(pipe: IO[bytes] | None, splitter: LineSplitter) -> None:
    if pipe is None:
        return
    with pipe:
        while chunk := pipe.read1(65536):  # type: ignore[attr-defined]
            splitter.feed(chunk)
    splitter.close()


def _kill_pgid(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
