"""The ``container`` kind: a command in a container (or a local process), logged and retried.

Seed 003's training agent, on the durable queue: every output line goes to
the task's log as it is printed (shipped with each heartbeat, so a node that
dies loses seconds, not the log), the worker's timeout and cancel stop the
job with SIGTERM then SIGKILL, the container is removed in every outcome,
each running task gets GPUs of its own, and the output folder is copied to
the output bucket after every attempt, so a retry starts from the last
checkpoint the previous attempt wrote.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

from conveyor.errors import ProcessorError, TaskCancelled
from conveyor.models import OutputFile
from conveyor.processors.base import Processor, ProcessorContext

from .gpus import GpuAllocator, inventory
from .local import LocalRunner
from .params import ContainerParams
from .runner import Runner, RunnerError, RunSpec

log = logging.getLogger(__name__)

# bandit B105: the name of a prefix, not a secret
SECRET_ENV_PREFIX = "CONVEYOR_SECRET_"  # nosec B105
REDACTED = "********"


def resolve_secrets(names: list[str], environ: dict[str, str] | None = None) -> dict[str, str]:
    """Secret values from the worker's environment (``CONVEYOR_SECRET_<NAME>``)."""
    environ = dict(os.environ) if environ is None else environ
    missing = [n for n in names if f"{SECRET_ENV_PREFIX}{n}" not in environ]
    if missing:
        raise ProcessorError(
            "secret(s) not set on this worker: "
            + ", ".join(f"{n} (set {SECRET_ENV_PREFIX}{n})" for n in missing),
            retryable=False,
            code="missing_secret",
        )
    return {n: environ[f"{SECRET_ENV_PREFIX}{n}"] for n in names}


def redactor(values: list[str]) -> Any:
    """A function that hides every secret value in a log line."""
    secrets = sorted({v for v in values if len(v) >= 4}, key=len, reverse=True)

    def redact(line: str) -> str:
        for v in secrets:
            if v in line:
                line = line.replace(v, REDACTED)
        return line

    return redact


def _user() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


class OutputSync:
    """Copies settled files of the output folder to the bucket while the job runs.

    After the attempt the whole folder is saved anyway; this is for a worker
    that dies without that chance: the next attempt still finds the
    checkpoints written up to ``interval`` seconds before. A file is copied
    once it has not changed for a moment, so a checkpoint being written is
    not saved half-done.
    """

    def __init__(self, ctx: ProcessorContext, folder: Path, prefix: str, interval: float) -> None:
        self.ctx, self.folder, self.prefix = ctx, folder, prefix
        self.interval = interval
        self.settle = min(2.0, interval)
        self.sent: dict[str, tuple[int, int]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if interval > 0:
            self._thread = threading.Thread(target=self._loop, name="output-sync", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.once()
            except Exception:  # the final save after the attempt still happens
                log.warning("output sync failed", exc_info=True)

    def once(self) -> int:
        n = 0
        now = time.time()
        for path in sorted(self.folder.rglob("*")):
            if not path.is_file() or path.is_symlink():
                continue
            st = path.stat()
            rel = path.relative_to(self.folder).as_posix()
            mark = (st.st_size, st.st_mtime_ns)
            if self.sent.get(rel) == mark or st.st_mtime > now - self.settle:
                continue
            self.ctx.storage.put_file(self.ctx.output_bucket, self.prefix + rel, path)
            self.sent[rel] = mark
            n += 1
        return n

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


class ContainerProcessor(Processor):
    kind: ClassVar[str] = "container"
    params_model: ClassVar[type[BaseModel]] = ContainerParams
    runs_caller_code: ClassVar[bool] = True  # submitting one needs tasks:run_code

    def __init__(self, settings: Any = None) -> None:
        super().__init__(settings)
        self._lock = threading.Lock()
        self._docker: Runner | None = None
        self._docker_checked = False
        self._docker_error = ""
        temp = self._setting("temp_dir", None)
        self._local = LocalRunner(Path(temp) / "conveyor-local-jobs" if temp else None)
        self._gpus: GpuAllocator | None = None
        self._reaper: threading.Thread | None = None
        self._reaper_stop = threading.Event()

    # -- settings, with defaults when run without them ------------------------------------
    def _setting(self, name: str, default: Any) -> Any:
        return getattr(self.settings, name, default) if self.settings is not None else default

    @property
    def mode(self) -> str:
        return str(self._setting("container_runner", "auto"))

    def requires_input(self) -> bool:
        return False

    def gpus_needed(self, params: dict[str, Any]) -> int:
        return ContainerParams.model_validate(params).gpu_count

    # -- what this host offers ----------------------------------------------------------------
    def docker(self) -> Runner | None:
        with self._lock:
            if not self._docker_checked:
                self._docker_checked = True
                if self.mode in ("auto", "docker"):
                    try:
                        from .docker_runner import DockerRunner

                        runner = DockerRunner(self._setting("docker_host", "") or None)
                        runner.client.ping()
                        self._docker = runner
                    except Exception as exc:  # no engine here: the local runner stands in
                        self._docker_error = str(exc)
                        log.info("no container engine: %s", exc)
            return self._docker

    def gpus(self) -> GpuAllocator:
        with self._lock:
            if self._gpus is None:
                self._gpus = GpuAllocator(inventory(str(self._setting("gpus", "auto"))))
            return self._gpus

    def gpu_devices(self) -> list[str]:
        return self.gpus().devices

    def probe(self) -> dict[str, Any] | None:
        if self.mode == "off":
            return None
        engine = self.docker()
        if self.mode == "docker" and engine is None:
            log.warning("CONVEYOR_CONTAINER_RUNNER=docker but no engine: %s", self._docker_error)
            return None
        caps: dict[str, Any] = {
            "runners": (["docker"] if engine else [])
            + (["local"] if self.mode != "docker" else []),
            "gpus": self.gpus().devices,
        }
        if "local" in caps["runners"]:
            log.warning(
                "Container tasks without an image%s run as local processes as user %s: "
                "whoever may submit tasks may run commands on this host "
                "(CONVEYOR_CONTAINER_RUNNER=docker or off to refuse)",
                "" if engine else " (and all container tasks: no engine here)",
                _user(),
            )
        if engine is not None:
            caps["engine"] = getattr(engine, "version", lambda: "")()
        runners: list[Runner] = [engine] if engine is not None else []
        if "local" in caps["runners"]:
            runners.append(self._local)
        for runner in runners:
            self._reap_now(runner)
        self._start_reaper(runners)
        return caps

    def _reap_now(self, runner: Runner) -> None:
        try:
            n = runner.reap_orphans()
        except Exception:
            log.exception("orphan reaping failed")
            return
        if n:
            log.warning("Removed %d orphan(s) left by dead workers (%s runner)", n, runner.name)

    def _start_reaper(self, runners: list[Runner]) -> None:
        interval = float(self._setting("container_reap_interval", 300.0))
        with self._lock:
            if self._reaper is not None or not runners:
                return

            def loop() -> None:
                while not self._reaper_stop.wait(interval):
                    for runner in runners:
                        self._reap_now(runner)

            self._reaper = threading.Thread(target=loop, name="conveyor-orphans", daemon=True)
            self._reaper.start()

    # -- one attempt ------------------------------------------------------------------------------
    def _pick_runner(self, p: ContainerParams, ctx: ProcessorContext) -> Runner:
        engine = self.docker() if p.runner != "local" else None
        if p.image and engine is not None:
            return engine
        if p.runner == "docker" or self.mode == "docker":
            if engine is not None:  # no image: only the local runner could run it
                raise ProcessorError(
                    "this worker runs container tasks in Docker only "
                    "(CONVEYOR_CONTAINER_RUNNER=docker): give an image",
                    retryable=False,
                    code="no_engine",
                )
            raise ProcessorError(
                "no container engine on this worker"
                + (f": {self._docker_error}" if self._docker_error else ""),
                code="no_engine",
            )
        if p.image:
            why = (
                "runner local was asked for" if p.runner == "local" else "no container engine here"
            )
            ctx.log(f"Running the command as a local process, not in {p.image}: {why}")
        if not p.command:
            raise ProcessorError(
                "the local runner needs a command (an image's default command needs an engine)",
                retryable=False,
                code="invalid_params",
            )
        return self._local

    def run(self, ctx: ProcessorContext) -> list[OutputFile]:
        p = ContainerParams.model_validate(ctx.task.params)
        secrets = resolve_secrets(p.secrets)
        redact = redactor(list(secrets.values()))
        runner = self._pick_runner(p, ctx)
        attempt = ctx.attempt or ctx.task.attempts
        emit = ctx.log_stream

        def on_line(stream: str, line: str) -> None:
            line = redact(line)
            if emit is not None:
                emit(line, stream)
            else:
                ctx.log(line)

        input_dir, output_dir, work_dir = (ctx.workdir / d for d in ("inputs", "outputs", "work"))
        for d in (input_dir, output_dir, work_dir):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o777)  # the image's user may not be root
        ctx.report_progress(0.0, "preparing", "")
        for obj in p.inputs:
            dest = input_dir / (obj.path or obj.key)
            dest.parent.mkdir(parents=True, exist_ok=True)
            ctx.storage.get_file(obj.bucket, obj.key, dest)
        restored = self._restore_outputs(ctx, output_dir)
        if restored:
            ctx.log(f"Restored {restored} file(s) of the previous attempt's output folder")

        allocator = self.gpus()

        def waiting(why: str) -> None:
            ctx.log(f"Waiting for GPUs: {why}")
            ctx.report_progress(0.0, "waiting", why)

        devices = allocator.acquire(p.gpus, ctx.cancel_event, on_wait=waiting)
        try:
            env = {
                **p.env,
                **secrets,
                "CONVEYOR_TASK_ID": ctx.task.id,
                "CONVEYOR_ATTEMPT": str(attempt),
            }
            if devices:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
                env["NVIDIA_VISIBLE_DEVICES"] = ",".join(devices)
            if runner is self._local:
                env["CONVEYOR_INPUT_DIR"] = str(input_dir)
                env["CONVEYOR_OUTPUT_DIR"] = str(output_dir)
            spec = RunSpec(
                task_id=ctx.task.id,
                attempt=attempt,
                worker_id=ctx.worker_id,
                command=list(p.command),
                env=env,
                input_dir=input_dir,
                output_dir=output_dir,
                work_dir=work_dir,
                image=p.image,
                workdir=p.workdir,
                outputs=p.outputs,
                gpus=devices,
                cpus=p.cpus,
                memory=p.memory,
                shm_size=p.shm_size,
                network=str(self._setting("container_network", "")) or None,
                grace_s=float(self._setting("container_grace", 10.0)),
            )
            where = f"image {p.image}" if runner.name == "docker" else "a local process"
            shown = " ".join(p.command) or "(the image's default command)"
            ctx.log(
                f"Starting {where} ({runner.name} runner): {shown}"
                + (f" on GPU(s) {','.join(devices)}" if devices else "")
            )
            ctx.report_progress(0.0, "running", "")
            sync = OutputSync(
                ctx,
                output_dir,
                self._prefix(ctx),
                float(self._setting("container_sync_interval", 30)),
            )
            try:
                result = runner.run(spec, on_line, ctx.cancel_event)
            except RunnerError as exc:
                retry = exc.retryable and p.retries(None, False)
                raise ProcessorError(str(exc), retryable=retry, code="runner_error") from exc
            finally:
                sync.stop()
        finally:
            allocator.release(devices)
        outputs = self._save_outputs(ctx, output_dir)
        if result.stopped:
            ctx.log(
                f"Job stopped after {result.duration_s:.1f} s; {len(outputs)} output file(s) kept"
            )
            raise TaskCancelled("stopped")
        code = result.exit_code
        ctx.log(
            f"Job exited with code {code} after {result.duration_s:.1f} s"
            + (" (killed: out of memory)" if result.oom_killed and code else "")
            + (
                " (a process of the job was killed: out of memory)"
                if result.oom_killed and not code
                else ""
            )
            + f"; {len(outputs)} output file(s) saved"
        )
        if code == 0:
            return outputs
        what = "out of memory (OOM killed)" if result.oom_killed else f"exit code {code}"
        raise ProcessorError(
            f"job failed: {what}",
            retryable=p.retries(code, result.oom_killed),
            code="oom_killed" if result.oom_killed else f"exit_{code}",
        )

    # -- the output folder ----------------------------------------------------------------
    @staticmethod
    def _prefix(ctx: ProcessorContext) -> str:
        return f"{ctx.task.id}/"

    def _restore_outputs(self, ctx: ProcessorContext, output_dir: Path) -> int:
        n = 0
        prefix = self._prefix(ctx)
        for obj in ctx.storage.list(ctx.output_bucket, prefix):
            rel = obj.key[len(prefix) :]
            dest = output_dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            ctx.storage.get_file(ctx.output_bucket, obj.key, dest)
            n += 1
        return n

    def _save_outputs(self, ctx: ProcessorContext, output_dir: Path) -> list[OutputFile]:
        outputs: list[OutputFile] = []
        prefix = self._prefix(ctx)
        for path in sorted(output_dir.rglob("*")):
            if not path.is_file() or path.is_symlink():
                continue  # a symlink could point anywhere on the worker
            rel = path.relative_to(output_dir).as_posix()
            try:
                info = ctx.storage.put_file(ctx.output_bucket, prefix + rel, path)
            except Exception as exc:
                ctx.log(f"Could not save output {rel}: {exc}")
                continue
            outputs.append(OutputFile(name=rel, bucket=info.bucket, key=info.key, size=info.size))
        return outputs


__all__ = ["ContainerParams", "ContainerProcessor"]
