"""The ``container`` kind: a command in a container, logged and retried.

The training agent's jobs, on the durable queue: every output line goes to
the task's log as it is printed (shipped with each heartbeat, so a node that
dies loses seconds, not the log), the worker's timeout and cancel stop the
job with SIGTERM then SIGKILL, the container is removed in every outcome,
and each running task gets GPUs of its own.

Where it runs is the worker operator's choice, never the caller's:
``CONVEYOR_CONTAINER_RUNNER=auto`` (the default) and ``docker`` run jobs in a
Docker sandbox (``docker_runner``) and do not take container tasks at all on
a host without an engine; the local runner (``local``), which is no sandbox,
runs only where the operator turned it on, and where others may submit
(auth on) only with ``CONVEYOR_CONTAINER_LOCAL_UNSANDBOXED`` naming the risk.

Outputs are staged, never written to their final keys (``conveyor.outputs``):
the output folder is copied out without following a link (``sandbox``),
checkpoints go to the attempt's staging prefix while the job runs, and the
final save stages every file or fails the attempt (retryably): the worker
completes the task with what was staged, under a lease it still holds, and
only then are the files moved to ``<task id>/...``.  An attempt that has lost
its lease saves nothing.  The next attempt starts from what earlier attempts
staged, so a retry resumes from the last checkpoint.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ValidationError

from conveyor.errors import (
    InvalidParams,
    LeaseLost,
    ObjectNotFound,
    ProcessorError,
    TaskCancelled,
)
from conveyor.models import InputRef, OutputFile
from conveyor.outputs import task_staging
from conveyor.processors.base import ConsoleLink, Processor, ProcessorContext
from conveyor.storage.base import ObjectInfo

from .gpus import GpuAllocator, inventory
from .labels import LABELS
from .local import LocalRunner
from .params import ContainerParams, registry_refusal
from .runner import OutputSource, Runner, RunnerError, RunSpec
from .sandbox import FileEntry, Limits, OutputsTooLarge, Snapshot, clean_name, private_dir
from .settings import (
    LOCAL_RUNNER_REFUSAL,
    LOCAL_RUNNER_RISK,
    ContainerSettings,
    local_runner_guarded,
)

if TYPE_CHECKING:
    from fastapi import APIRouter

log = logging.getLogger(__name__)

# bandit B105: the name of a prefix, not a secret
SECRET_ENV_PREFIX = "CONVEYOR_SECRET_"  # nosec B105
REDACTED = "********"
NO_LOCAL_RUNNER = (
    "the local runner is off on this deployment (CONVEYOR_CONTAINER_RUNNER={mode}): "
    "a container task needs an image (a command without one, or runner local, needs "
    "a worker whose operator turned the local runner on)"
)


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


def local_user(spec: str) -> tuple[int, int] | None:
    """``CONVEYOR_CONTAINER_LOCAL_USER`` (``uid[:gid]`` or an account name) as numbers."""
    spec = spec.strip()
    if not spec:
        return None
    name, _, group = spec.partition(":")
    if name.isdigit():
        uid = int(name)
        gid = int(group) if group.isdigit() else uid
        return uid, gid
    import pwd

    pw = pwd.getpwnam(name)
    return pw.pw_uid, int(group) if group.isdigit() else pw.pw_gid


class OutputSync:
    """Stages settled files of the job's output folder while it runs (checkpoints).

    For a worker that dies before its final save: the next attempt still finds
    the checkpoints written up to ``interval`` seconds before.  A file is
    staged once it has not changed for a moment, so a checkpoint being written
    is not taken half-done.  It stops at once when the task is cancelled or its
    lease is lost (the worker sets ``cancel_event`` then too), and checks the
    lease before every pass and every file.
    """

    def __init__(
        self, ctx: ProcessorContext, scratch: Path, interval: float, limits: Limits
    ) -> None:
        self.ctx, self.scratch, self.interval, self.limits = ctx, scratch, interval, limits
        self.settle = min(2.0, interval)
        # rel -> (size, mtime, when staged): what this attempt has staged of each file
        self.sent: dict[str, tuple[int, float, float]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._source: OutputSource | None = None

    def attach(self, source: OutputSource) -> None:
        """The runner's view of the running job's output folder: start syncing it."""
        self._source = source
        if self.interval > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="output-sync", daemon=True)
            self._thread.start()

    def _stopping(self) -> bool:
        return self._stop.is_set() or self.ctx.cancel_event.is_set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            if self._stopping():
                return
            try:
                self.once()
            except LeaseLost:
                return  # not ours to write any more
            except OutputsTooLarge as exc:
                self.ctx.log(f"Checkpoints not saved: {exc}")
            except Exception:  # the final save after the attempt still happens
                log.warning("output sync failed", exc_info=True)

    def _wanted(self, rel: str, size: int, mtime: float, granularity: float) -> bool:
        staged = self.sent.get(rel)
        if staged is not None and staged[:2] == (size, mtime):
            return False
        return mtime + granularity <= time.time() - self.settle

    def once(self) -> int:
        """One pass: stage what changed and settled; how many files were staged."""
        if self._source is None or self._stopping():
            return 0
        self.ctx.check_lease()
        grain = self._source.mtime_granularity
        tmp = Path(tempfile.mkdtemp(prefix="sync-", dir=self.scratch))
        try:
            started = time.time()
            snap = self._source.snapshot(
                tmp, self.limits, lambda rel, size, mtime: self._wanted(rel, size, mtime, grain)
            )
            n = 0
            for rel, entry in sorted(snap.files.items()):
                if self._stopping():
                    break
                self.ctx.stager.stage(f"{self.ctx.task.id}/{rel}", entry.path)
                self.sent[rel] = (entry.size, entry.mtime, started)
                n += 1
            return n
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def already_staged(self, rel: str, entry: FileEntry) -> bool:
        """Whether this attempt staged exactly this file already (same size and time,
        and staged long enough after that time that a later write would show)."""
        staged = self.sent.get(rel)
        return (
            staged is not None
            and staged[:2] == (entry.size, entry.mtime)
            and staged[2] - entry.mtime >= 2.0
        )

    def stop(self) -> None:
        """Stop, and wait for a pass under way: the final save must come after it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=600)
            if self._thread.is_alive():
                log.error("output sync did not stop within 10 minutes")


class ContainerProcessor(Processor):
    kind: ClassVar[str] = "container"
    params_model: ClassVar[type[BaseModel]] = ContainerParams
    settings_model = ContainerSettings
    config: ContainerSettings
    runs_caller_code: ClassVar[bool] = True  # submitting one needs tasks:run_code
    labels: ClassVar[dict[str, dict[str, str]]] = LABELS

    def __init__(self, settings: Any = None) -> None:
        super().__init__(settings)
        self._lock = threading.Lock()
        self._docker: Runner | None = None
        self._docker_checked = False
        self._docker_error = ""
        # why this worker does not take container tasks (the worker reports it)
        self.unavailable_reason = ""
        temp = getattr(settings, "temp_dir", None) if settings is not None else None
        self._local_state = Path(temp) / "conveyor-local-jobs" if temp else None
        self._local_runner: LocalRunner | None = None
        self._gpus: GpuAllocator | None = None
        self._reaper: threading.Thread | None = None
        self._reaper_stop = threading.Event()

    @property
    def mode(self) -> str:
        return self.config.runner

    @property
    def limits(self) -> Limits:
        return Limits(
            self.config.max_output_bytes,
            self.config.max_output_files,
        )

    @property
    def _local(self) -> LocalRunner:
        with self._lock:
            if self._local_runner is None:
                user = local_user(self.config.local_user)
                self._local_runner = LocalRunner(self._local_state, user)
            return self._local_runner

    def requires_input(self) -> bool:
        return False

    # -- its faces: the training API (POST /train, …) and its console page ------------------
    def routers(self) -> list[APIRouter]:
        from .console import router as console_router
        from .training import router as training_router

        return [training_router, console_router]

    def console_links(self) -> list[ConsoleLink]:
        return [ConsoleLink("/tasks/run", "run.link", "tasks:run_code")]

    def gpus_needed(self, params: dict[str, Any]) -> int:
        return ContainerParams.model_validate(params).gpu_count

    @classmethod
    def gpus_in_params(cls, params: dict[str, Any]) -> int:
        """``gpus``: a count or a list of device ids."""
        want = params.get("gpus")
        if isinstance(want, list):
            return len(want)
        if isinstance(want, int) and not isinstance(want, bool):
            return max(0, want)
        return 0

    # -- what a deployment accepts at submit ------------------------------------------------
    def validate(self, params: dict[str, Any], input_ref: InputRef | None) -> dict[str, Any]:
        """The params model's checks, then this deployment's rules: an image's registry
        may not be this host (unless the operator allows it), and a task that only the
        local runner could run is refused where the API's operator said the workers run
        Docker or nothing (``docker``, ``off``; with ``auto`` the workers decide: one
        without an engine does not take it, one with an engine fails it at once)."""
        out = super().validate(params, input_ref)
        p = ContainerParams.model_validate(out)
        why = self.policy_refusal(p)
        if why is not None:
            where, text = why
            raise InvalidParams(f"invalid container parameter {where}: {text}")
        return out

    def policy_refusal(self, p: ContainerParams) -> tuple[str, str] | None:
        refused = registry_refusal(p.image, self.config.local_registries)
        if refused is not None:
            return "image", refused
        if self.mode in ("docker", "off") and (p.runner == "local" or not p.image):
            where = "runner" if p.runner == "local" else "image"
            return where, NO_LOCAL_RUNNER.format(mode=self.mode)
        return None

    # -- what this host offers ----------------------------------------------------------------
    def docker(self) -> Runner | None:
        with self._lock:
            if not self._docker_checked:
                self._docker_checked = True
                if self.mode in ("auto", "docker"):
                    try:
                        from .docker_runner import DockerRunner

                        runner = DockerRunner(
                            self.config.docker_host or None,
                            user=self.config.user,
                            pids_limit=self.config.pids_limit,
                        )
                        runner.client.ping()
                        self._docker = runner
                    except Exception as exc:  # no engine here: no container tasks either
                        text = " ".join(str(exc).split())
                        self._docker_error = text if len(text) <= 160 else text[:159] + "…"
                        log.info("no container engine: %s", exc)
            return self._docker

    def gpus(self) -> GpuAllocator:
        with self._lock:
            if self._gpus is None:
                self._gpus = GpuAllocator(inventory(self.config.gpus))
            return self._gpus

    def gpu_devices(self) -> list[str]:
        return self.gpus().devices

    def _local_refusal(self) -> str | None:
        """Why the local runner may not run here although the operator chose it."""
        if (
            self.settings is not None
            and local_runner_guarded(self.settings)
            and self.config.local_unsandboxed != LOCAL_RUNNER_RISK
        ):
            return LOCAL_RUNNER_REFUSAL
        spec = self.config.local_user
        try:
            user = local_user(spec)
        except (KeyError, ValueError):
            return f"CONVEYOR_CONTAINER_LOCAL_USER={spec}: no such user on this host"
        if user is not None and os.geteuid() != 0:
            return (
                f"CONVEYOR_CONTAINER_LOCAL_USER={spec} needs a worker running as root "
                "(it starts each job as that user)"
            )
        return None

    def probe(self) -> dict[str, Any] | None:
        self.unavailable_reason = ""
        caps: dict[str, Any]
        runners: list[Runner] = []
        if self.mode == "off":
            self.unavailable_reason = (
                "container tasks are turned off on this worker (CONVEYOR_CONTAINER_RUNNER=off)"
            )
            return None
        if self.mode == "local":
            refusal = self._local_refusal()
            if refusal is not None:
                self.unavailable_reason = refusal
                log.error("Not taking container tasks: %s", refusal)
                return None
            user = self._local.user
            caps = {"runners": ["local"], "sandbox": "none"}
            if user is not None:
                caps["local_user"] = f"{user[0]}:{user[1]}"
            log.warning(
                "Container tasks run as local processes on this host, as %s, without a "
                "sandbox: whoever may submit container tasks may run commands here "
                "(CONVEYOR_CONTAINER_RUNNER=docker for a sandbox)",
                f"uid {user[0]}" if user is not None else f"user {_user()}",
            )
            runners.append(self._local)
        else:
            engine = self.docker()
            if engine is None:
                if self.mode == "docker":
                    why = "CONVEYOR_CONTAINER_RUNNER=docker but no container engine answers"
                else:
                    why = "no container engine on this worker"
                self.unavailable_reason = (
                    f"{why} ({self._docker_error or 'no answer'}); the local runner is off "
                    "unless its operator turns it on"
                )
                log.warning("Not taking container tasks: %s", self.unavailable_reason)
                return None
            caps = {
                "runners": ["docker"],
                "engine": getattr(engine, "version", lambda: "")(),
                "user": self.config.user,
                "pids_limit": self.config.pids_limit,
            }
            if caps["user"].split(":")[0] == "0":
                log.warning("CONVEYOR_CONTAINER_USER=%s: container jobs run as root", caps["user"])
            runners.append(engine)
        caps["gpus"] = self.gpus().devices
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
        interval = self.config.reap_interval
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
        """The runner this worker's operator chose; a task cannot pick another."""
        if self.mode == "local":
            refusal = self._local_refusal()
            if refusal is not None:
                raise ProcessorError(refusal, retryable=True, code="no_runner")
            if p.runner == "docker":
                raise ProcessorError(
                    "runner docker was asked for, but this worker runs container tasks as "
                    "local processes only (CONVEYOR_CONTAINER_RUNNER=local)",
                    retryable=False,
                    code="runner_not_allowed",
                )
            if not p.command:
                raise ProcessorError(
                    "the local runner needs a command (an image's default command needs an engine)",
                    retryable=False,
                    code="invalid_params",
                )
            if p.image:
                ctx.log(f"Running the command as a local process, not in {p.image}")
            return self._local
        engine = self.docker() if self.mode in ("auto", "docker") else None
        if engine is None:
            raise ProcessorError(
                "no container engine on this worker"
                + (f" ({self._docker_error})" if self._docker_error else ""),
                code="no_engine",
            )
        if p.runner == "local":
            raise ProcessorError(
                "runner local was asked for, but this worker runs container tasks in "
                "Docker only: the local runner is its operator's choice, not the task's",
                retryable=False,
                code="runner_not_allowed",
            )
        if not p.image:
            raise ProcessorError(
                "this worker runs container tasks in Docker only "
                f"(CONVEYOR_CONTAINER_RUNNER={self.mode}): give an image",
                retryable=False,
                code="no_engine",
            )
        refused = registry_refusal(p.image, self.config.local_registries)
        if refused is not None:
            raise ProcessorError(refused, retryable=False, code="invalid_params")
        return engine

    def run(self, ctx: ProcessorContext) -> list[OutputFile]:
        try:  # checked at submit; again here for tasks queued before today's rules
            p = ContainerParams.model_validate(ctx.task.params)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(x) for x in first.get("loc", ())) or "params"
            raise ProcessorError(
                f"invalid container parameter {where}: {first['msg']}",
                retryable=False,
                code="invalid_params",
            ) from None
        runner = self._pick_runner(p, ctx)
        secrets = resolve_secrets(p.secrets)
        redact = redactor(list(secrets.values()))
        attempt = ctx.attempt or ctx.task.attempts
        emit = ctx.log_stream
        limits = self.limits

        def on_line(stream: str, line: str) -> None:
            line = redact(line)
            if emit is not None:
                emit(line, stream)
            else:
                ctx.log(line)

        # private folders of the worker's: what goes into the job, and what comes out
        private_dir(ctx.workdir)
        input_dir, output_dir, work_dir, scratch = (
            private_dir(ctx.workdir / d) for d in ("inputs", "outputs", "work", "scratch")
        )
        ctx.report_progress(0.0, "preparing", "")
        self._get_inputs(ctx, p, input_dir)
        restored = self._restore_checkpoints(ctx, output_dir)
        if restored:
            ctx.log(f"Restored {restored} file(s) of earlier attempts' output folder")

        allocator = self.gpus()

        def waiting(why: str) -> None:
            ctx.log(f"Waiting for GPUs: {why}")
            ctx.report_progress(0.0, "waiting", why)

        devices = allocator.acquire(p.gpus, ctx.cancel_event, on_wait=waiting)
        final: dict[str, Any] = {}

        def collect(source: OutputSource) -> None:
            """The job has ended: copy its output folder out, unless the lease is gone."""
            try:
                ctx.check_lease()
            except LeaseLost as exc:
                final["lost"] = exc
                return
            try:
                final["snapshot"] = source.snapshot(scratch / "final", limits)
            except OutputsTooLarge as exc:
                final["too_large"] = exc
            except Exception as exc:
                log.warning("could not copy the output folder out", exc_info=True)
                final["error"] = exc

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
                network=self.config.network or None,
                grace_s=self.config.grace,
                limits=limits,
            )
            where = f"image {p.image}" if runner.name == "docker" else "a local process"
            shown = " ".join(p.command) or "(the image's default command)"
            ctx.log(
                f"Starting {where} ({runner.name} runner): {shown}"
                + (f" on GPU(s) {','.join(devices)}" if devices else "")
            )
            ctx.report_progress(0.0, "running", "")
            sync = OutputSync(ctx, scratch, self.config.sync_interval, limits)
            try:
                result = runner.run(
                    spec, on_line, ctx.cancel_event, on_running=sync.attach, on_exit=collect
                )
            except RunnerError as exc:
                retry = exc.retryable and p.retries(None, False)
                raise ProcessorError(str(exc), retryable=retry, code="runner_error") from exc
            finally:
                sync.stop()
        finally:
            allocator.release(devices)
        if "lost" in final:
            raise final["lost"]  # a stale attempt: nothing of it may be saved
        ctx.check_lease()
        code = result.exit_code
        ok = code == 0 and not result.stopped
        # a failed or stopped attempt's staging is where the next attempt starts
        outputs = self._save(ctx, final, sync, as_outputs=ok)
        if result.stopped:
            ctx.log(
                f"Job stopped after {result.duration_s:.1f} s; "
                f"{len(final.get('snapshot', Snapshot()).files)} file(s) of its output "
                "folder kept for the next attempt"
            )
            raise TaskCancelled("stopped")
        ctx.log(
            f"Job exited with code {code} after {result.duration_s:.1f} s"
            + (" (killed: out of memory)" if result.oom_killed and code else "")
            + (
                " (a process of the job was killed: out of memory)"
                if result.oom_killed and not code
                else ""
            )
            + (
                f"; {len(outputs)} output file(s) saved"
                if ok
                else f"; {len(final.get('snapshot', Snapshot()).files)} file(s) of its "
                "output folder kept for the next attempt"
            )
        )
        if ok:
            return outputs
        what = "out of memory (OOM killed)" if result.oom_killed else f"exit code {code}"
        raise ProcessorError(
            f"job failed: {what}",
            retryable=p.retries(code, result.oom_killed),
            code="oom_killed" if result.oom_killed else f"exit_{code}",
        )

    # -- inputs and the output folder -------------------------------------------------------
    @staticmethod
    def _get_inputs(ctx: ProcessorContext, p: ContainerParams, input_dir: Path) -> None:
        for obj in p.inputs:
            dest = input_dir / (obj.path or obj.key)
            dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                ctx.storage.get_file(obj.bucket, obj.key, dest)
            except ObjectNotFound as exc:
                raise ProcessorError(
                    f"input object not found: {obj.bucket}/{obj.key}",
                    retryable=False,
                    code="not_found",
                ) from exc
            except OSError as exc:
                raise ProcessorError(
                    f"could not download input {obj.bucket}/{obj.key}: {exc}", retryable=True
                ) from exc

    def _restore_checkpoints(self, ctx: ProcessorContext, output_dir: Path) -> int:
        """Put what earlier attempts of the task staged into the new output folder: every
        earlier attempt's files, newer ones over older (the newest alone may have died
        before it staged everything).  The task's first claim has none, and skips the
        listing (one storage call, a round trip to the API for a remote worker)."""
        if len(ctx.task.history) <= 1:  # as the worker's rule: only this attempt so far
            return 0
        root = task_staging(ctx.task.id)
        own = ctx.stager.prefix
        by_attempt: dict[str, list[ObjectInfo]] = {}
        try:
            for info in ctx.storage.list(ctx.output_bucket, root):
                folder = root + info.key[len(root) :].split("/", 1)[0] + "/"
                if folder < own:
                    by_attempt.setdefault(folder, []).append(info)
            latest: dict[str, ObjectInfo] = {}
            for folder in sorted(by_attempt):
                below = f"{folder}{ctx.task.id}/"
                for info in by_attempt[folder]:
                    rel = clean_name(info.key[len(below) :]) if info.key.startswith(below) else None
                    if rel is not None:
                        latest[rel] = info
            for rel, info in sorted(latest.items()):
                dest = output_dir / rel
                dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                ctx.storage.get_file(ctx.output_bucket, info.key, dest)
        except (ProcessorError, LeaseLost):
            raise
        except Exception as exc:
            raise ProcessorError(
                f"could not restore the last attempt's checkpoints: {exc}", retryable=True
            ) from exc
        return len(latest)

    def _save(
        self, ctx: ProcessorContext, final: dict[str, Any], sync: OutputSync, *, as_outputs: bool
    ) -> list[OutputFile]:
        """Stage the output folder copied out after the job: every file, or the attempt
        fails (retryably: another attempt may find the store working).  ``as_outputs``:
        the job succeeded and these are the task's outputs; else they are checkpoints
        for the next attempt, and failing to keep them is only logged."""
        if "too_large" in final:
            ctx.log(f"Output folder not saved: {final['too_large']}")
            ctx.stager.discard()
            raise ProcessorError(
                f"outputs too large: {final['too_large']}",
                retryable=False,
                code="outputs_too_large",
            )
        if "error" in final:
            exc = final["error"]
            if not as_outputs:
                ctx.log(f"Output folder not kept: {exc}")
                return []
            raise ProcessorError(
                f"the output folder could not be copied out of the job: {exc}",
                retryable=True,
                code="outputs_not_saved",
            ) from exc
        snap: Snapshot = final.get("snapshot", Snapshot())
        if snap.skipped:
            shown = ", ".join(snap.skipped[:10]) + (" …" if len(snap.skipped) > 10 else "")
            ctx.log(f"Not saved from the output folder ({len(snap.skipped)}): {shown}")
        outputs: list[OutputFile] = []
        files = sorted(snap.files.items())
        try:
            for rel, entry in files:
                key = f"{ctx.task.id}/{rel}"
                if as_outputs and sync.already_staged(rel, entry):
                    outputs.append(
                        OutputFile(
                            name=rel,
                            bucket=ctx.output_bucket,
                            key=key,
                            size=entry.size,
                            staged_key=ctx.stager.prefix + key,
                        )
                    )
                elif as_outputs:
                    outputs.append(ctx.stager.put_file(rel, key, entry.path))
                elif not sync.already_staged(rel, entry):
                    ctx.stager.stage(key, entry.path)
        except LeaseLost:
            raise
        except Exception as exc:
            saved = len(outputs) if as_outputs else 0
            log.warning("could not stage outputs of task %s", ctx.task.id, exc_info=True)
            if not as_outputs:
                ctx.log(f"Output folder not kept for the next attempt: {exc}")
                return []
            ctx.log(f"Outputs could not be saved ({saved} of {len(files)} staged): {exc}")
            raise ProcessorError(
                f"outputs could not be saved ({saved} of {len(files)}): {exc}",
                retryable=True,
                code="outputs_not_saved",
            ) from exc
        return outputs


__all__ = ["ContainerParams", "ContainerProcessor", "ContainerSettings"]
