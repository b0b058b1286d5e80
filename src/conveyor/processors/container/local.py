"""The local-process runner: the same job without an engine, on an operator's opt-in.

It is not a sandbox: the command runs on the worker's host, as the worker's
user unless the operator names another (``CONVEYOR_CONTAINER_LOCAL_USER``,
which needs a worker running as root; then the job's folders live in a
folder of their own, owned by that user, and the job cannot read the
worker's ``/proc/<pid>/environ`` or write what the worker owns).

The command runs as the leader of its own session, so a cancel or timeout
can signal every process it spawned; it dies with the worker thread
(PDEATHSIG), gets only the environment it asked for (never the worker's, which
may hold credentials), and an address-space limit when ``memory`` is set.
Its output folder is copied out with ``sandbox.copy_tree`` (``O_NOFOLLOW`` on
every component), never by following a path the job could have swapped.

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
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from conveyor.processors.procutil import die_with_parent, kill_group

from .runner import (
    LineSplitter,
    OnLine,
    OnSource,
    OutputSource,
    Runner,
    RunnerError,
    RunResult,
    RunSpec,
)
from .sandbox import Limits, Snapshot, Want, copy_tree

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


class FolderOutputs(OutputSource):
    """The local job's output folder, copied without following a link."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def snapshot(self, dest: Path, limits: Limits, want: Want | None = None) -> Snapshot:
        return copy_tree(self.folder, dest, limits, want)


@dataclass
class JobDirs:
    inputs: Path
    outputs: Path
    work: Path
    root: Path | None = None  # a folder made for another user's job: removed after it

    def cleanup(self) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid, follow_symlinks=False)
    for dirpath, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


class LocalRunner(Runner):
    name = "local"

    def __init__(self, state_dir: Path | None = None, user: tuple[int, int] | None = None) -> None:
        self.state_dir = state_dir
        self.user = user  # (uid, gid) the job runs as; None: the worker's own
        self._active: set[str] = set()
        self._lock = threading.Lock()

    def _job_dirs(self, spec: RunSpec) -> JobDirs:
        if self.user is None:
            return JobDirs(spec.input_dir, spec.output_dir, spec.work_dir)
        # the worker's own folders are private (0700): another user's job gets a folder
        # of its own, which only it and root may enter
        uid, gid = self.user
        root = Path(tempfile.mkdtemp(prefix="conveyor-job-"))
        try:
            dirs = JobDirs(root / "inputs", root / "outputs", root / "work", root)
            shutil.move(spec.input_dir, dirs.inputs)
            shutil.move(spec.output_dir, dirs.outputs)
            dirs.work.mkdir(mode=0o700)
            _chown_tree(dirs.inputs, 0, 0)
            for dirpath, _dirnames, files in os.walk(dirs.inputs):
                # bandit B103: root-owned and read-only to the job's user, inside a 0700
                # folder that only that user (and root) may enter
                os.chmod(dirpath, 0o755)  # nosec B103
                for name in files:
                    os.chmod(os.path.join(dirpath, name), 0o644)
            _chown_tree(dirs.outputs, uid, gid)
            os.chown(dirs.work, uid, gid)
            os.chown(root, uid, gid)
            root.chmod(0o700)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        return dirs

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

    def run(
        self,
        spec: RunSpec,
        on_line: OnLine,
        stop: threading.Event,
        on_running: OnSource | None = None,
        on_exit: OnSource | None = None,
    ) -> RunResult:
        try:
            dirs = self._job_dirs(spec)
        except OSError as exc:
            raise RunnerError(f"could not prepare the job's folders: {exc}") from exc
        try:
            token = secrets.token_hex(16)
            with self._lock:
                self._active.add(token)
            record = self._record(token, spec)
            try:
                result = self._run(spec, dirs, on_line, stop, token, on_running)
            finally:
                kill_token(token)  # a child that left the session is still the job's
                if record is not None:
                    record.unlink(missing_ok=True)
                with self._lock:
                    self._active.discard(token)
            if on_exit is not None:
                on_exit(FolderOutputs(dirs.outputs))  # nothing of the job is left running
            return result
        finally:
            dirs.cleanup()

    def _run(
        self,
        spec: RunSpec,
        dirs: JobDirs,
        on_line: OnLine,
        stop: threading.Event,
        token: str,
        on_running: OnSource | None,
    ) -> RunResult:
        env = {k: os.environ[k] for k in BASE_ENV if k in os.environ}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env["HOME"] = str(dirs.work)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(spec.gpus)  # "" hides every GPU
        env.update(spec.env)
        env["CONVEYOR_INPUT_DIR"] = str(dirs.inputs)
        env["CONVEYOR_OUTPUT_DIR"] = str(dirs.outputs)
        env[TOKEN_VAR] = token
        memory = spec.memory
        as_user: dict[str, object] = {}
        if self.user is not None:
            as_user = {"user": self.user[0], "group": self.user[1], "extra_groups": []}

        def preexec() -> None:
            die_with_parent()
            if memory:
                resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

        started = time.monotonic()
        try:
            proc = subprocess.Popen(  # type: ignore[call-overload]
                spec.command,
                cwd=dirs.work,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=preexec,
                **as_user,
            )
        except OSError as exc:
            raise RunnerError(f"cannot start {spec.command[0]!r}: {exc}", retryable=False) from exc
        if on_running is not None:
            on_running(FolderOutputs(dirs.outputs))
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
