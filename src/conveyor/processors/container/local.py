"""The local-process runner: the same job without an engine, for hosts with none.

The command runs as the leader of its own session, so a cancel or timeout
can signal every process it spawned; it dies with the worker thread
(PDEATHSIG), gets only the environment it asked for (never the worker's, which
may hold credentials), and an address-space limit when ``memory`` is set.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import threading
import time
from typing import IO

from conveyor.procutil import die_with_parent, kill_group

from .runner import LineSplitter, OnLine, Runner, RunnerError, RunResult, RunSpec

BASE_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "PYTHONPATH", "VIRTUAL_ENV")


class LocalRunner(Runner):
    name = "local"

    def run(self, spec: RunSpec, on_line: OnLine, stop: threading.Event) -> RunResult:
        env = {k: os.environ[k] for k in BASE_ENV if k in os.environ}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env["HOME"] = str(spec.work_dir)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(spec.gpus)  # "" hides every GPU
        env.update(spec.env)
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
