"""The Docker runner: one container per attempt through the Engine API.

Works with Docker and with Podman's compatible socket (``DOCKER_HOST``).
Every container carries labels naming its task, attempt, worker, host and
worker PID, so a worker that starts (and then every few minutes) removes the
containers that dead workers on its host left behind. A container is removed
in every outcome and the removal is checked; ``init`` is on so that a shell
as PID 1 passes SIGTERM on instead of swallowing it.

The sandbox: no folder of the host is mounted.  The inputs (and the last
attempt's checkpoints) go into the created container as an archive
(``put_archive``) before it starts; the output folder comes out of it as an
archive (``get_archive``), while it runs and once it has stopped, read by
``sandbox.extract_tar`` (regular files only, capped).  The job runs as a
non-root uid (``CONVEYOR_CONTAINER_USER``) with every capability dropped,
``no-new-privileges`` and a process limit, and sees only the environment the
task gives it.  Engine errors reach the task as a short message: what a
registry answered stays in the worker's own log.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.models.containers import Container
from docker.types import DeviceRequest

from .params import HOME_DIR, INPUT_DIR
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
from .sandbox import ChunkStream, Limits, Snapshot, Want, extract_tar, job_tar, stream_budget

log = logging.getLogger(__name__)

LABEL = "io.conveyor"
_active: set[str] = set()  # containers this process supervises now: never orphans
_active_lock = threading.Lock()


def brief(exc: BaseException, limit: int = 200) -> str:
    """One short printable line of an engine error: never a whole answer."""
    text = exc.explanation if isinstance(exc, APIError) and exc.explanation else str(exc)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    line = " ".join(str(text).split())
    line = "".join(c if c.isprintable() else "?" for c in line)
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _status(exc: BaseException) -> int | None:
    return exc.status_code if isinstance(exc, APIError) else None


def parse_user(user: str) -> tuple[int, int]:
    """``uid[:gid]`` as numbers (the gid is the uid when not given)."""
    uid, _, gid = user.partition(":")
    return int(uid), int(gid or uid)


class ContainerOutputs(OutputSource):
    """A container's output folder, read through the engine's archive endpoint."""

    mtime_granularity = 1.0

    def __init__(self, container: Container, path: str) -> None:
        self.container, self.path = container, path

    def snapshot(self, dest: Path, limits: Limits, want: Want | None = None) -> Snapshot:
        # A running job is frozen (cgroup freezer) while the engine archives its folder:
        # the engine's own walk would otherwise race a job swapping a folder for a link
        # and take what the link names inside the container.  A stopped one cannot move.
        paused = False
        with contextlib.suppress(APIError):
            self.container.pause()
            paused = True
        try:
            try:
                chunks, _stat = self.container.get_archive(self.path, chunk_size=1024 * 1024)
            except NotFound:  # the job removed its own output folder
                return Snapshot()
            raw = ChunkStream(chunks, stream_budget(limits))
            with io.BufferedReader(raw, 1024 * 1024) as stream:
                return extract_tar(stream, dest, limits, want)
        finally:
            if paused:
                with contextlib.suppress(DockerException):
                    self.container.unpause()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DockerRunner(Runner):
    name = "docker"

    def __init__(
        self, host: str | None = None, user: str = "65534:65534", pids_limit: int = 512
    ) -> None:
        self.host = host or None
        self.user = user
        self.pids_limit = pids_limit
        self.client = (
            docker.DockerClient(base_url=self.host, timeout=120)
            if self.host
            else docker.from_env(timeout=120)
        )
        self.hostname = socket.gethostname()

    def version(self) -> str:
        v: dict[str, Any] = self.client.version()
        return f"{v.get('Platform', {}).get('Name') or 'engine'} {v.get('Version', '?')}"

    # -- one job ---------------------------------------------------------------
    def run(
        self,
        spec: RunSpec,
        on_line: OnLine,
        stop: threading.Event,
        on_running: OnSource | None = None,
        on_exit: OnSource | None = None,
    ) -> RunResult:
        if not spec.image:
            raise RunnerError("the docker runner needs an image", retryable=False)
        self._ensure_image(spec.image, on_line)
        container = self._create(spec, spec.image)
        with _active_lock:
            _active.add(container.id or "")
        started = time.monotonic()
        try:
            self._put_files(container, spec)
            pumps = [
                threading.Thread(
                    target=self._pump,
                    args=(container, name, LineSplitter(name, on_line)),
                    daemon=True,
                )
                for name in ("stdout", "stderr")
            ]
            try:
                container.start()
            except APIError as exc:  # e.g. the command is not in the image: will not improve
                retryable = exc.status_code is None or exc.status_code >= 500
                log.warning("could not start container %s: %s", container.name, exc)
                raise RunnerError(
                    f"could not start the job: {brief(exc)}", retryable=retryable
                ) from exc
            for t in pumps:
                t.start()
            source = ContainerOutputs(container, spec.outputs)
            if on_running is not None:
                on_running(source)
            done = threading.Event()
            waited: dict[str, Any] = {}

            def _wait() -> None:
                try:
                    waited.update(container.wait())
                except Exception as exc:  # the engine went away: reported below
                    waited["error"] = exc
                done.set()

            threading.Thread(target=_wait, daemon=True).start()
            stopped = False
            while not done.wait(0.1):
                if stop.is_set():
                    stopped = True
                    # SIGTERM to PID 1 (docker-init forwards it), SIGKILL after the grace
                    with contextlib.suppress(NotFound):
                        container.stop(timeout=max(1, round(spec.grace_s)))
                    done.wait(spec.grace_s + 10)
                    break
            for t in pumps:
                t.join(timeout=5)
            if "error" in waited and not stopped:
                log.warning("lost container %s: %s", container.name, waited["error"])
                raise RunnerError(f"lost the container while waiting: {brief(waited['error'])}")
            state: dict[str, Any] = {}
            with contextlib.suppress(DockerException):
                container.reload()
                state = container.attrs.get("State", {})
            code = waited.get("StatusCode", state.get("ExitCode"))
            if code == 137 and spec.memory and not stopped and not state.get("OOMKilled"):
                # the engine may record the OOM event a moment after the exit
                for _ in range(10):
                    time.sleep(0.1)
                    with contextlib.suppress(DockerException):
                        container.reload()
                        state = container.attrs.get("State", {})
                    if state.get("OOMKilled"):
                        break
            result = RunResult(
                exit_code=None if stopped else (int(code) if code is not None else None),
                oom_killed=bool(state.get("OOMKilled")),
                stopped=stopped,
                duration_s=time.monotonic() - started,
            )
            if on_exit is not None:
                on_exit(source)  # the stopped container's folder, before it is removed
            return result
        finally:
            self._remove(container)
            with _active_lock:
                _active.discard(container.id or "")

    def _ensure_image(self, image: str, on_line: OnLine) -> None:
        try:
            self.client.images.get(image)
            return
        except ImageNotFound:
            pass
        except DockerException as exc:
            log.warning("container engine unavailable: %s", exc)
            raise RunnerError(f"container engine unavailable: {brief(exc, 120)}") from exc
        on_line("worker", f"Pulling image {image}")
        try:
            self.client.images.pull(image)
        except DockerException as exc:
            # what the registry answered stays in the worker's log: a registry may be
            # anything the engine can reach, and its answer is not the submitter's to read
            log.warning("could not pull image %s: %s", image, exc)
            status = _status(exc)
            if isinstance(exc, ImageNotFound | NotFound) or status == 404:
                raise RunnerError(
                    f"image {image} not found, or the registry refused access", retryable=False
                ) from exc
            if status in (401, 403):
                raise RunnerError(
                    f"image {image}: the registry refused access", retryable=False
                ) from exc
            what = f"the engine answered {status}" if status else "the engine could not pull it"
            raise RunnerError(f"could not pull image {image} ({what})") from exc

    def _create(self, spec: RunSpec, image: str) -> Container:
        labels = {
            f"{LABEL}.managed": "1",
            f"{LABEL}.task": spec.task_id,
            f"{LABEL}.attempt": str(spec.attempt),
            f"{LABEL}.worker": spec.worker_id,
            f"{LABEL}.host": self.hostname,
            f"{LABEL}.pid": str(os.getpid()),
        }
        # only what the task gives the job, and where its folders are: never the worker's
        env = {"HOME": HOME_DIR, **spec.env}
        env.update({"CONVEYOR_INPUT_DIR": INPUT_DIR, "CONVEYOR_OUTPUT_DIR": spec.outputs})
        kwargs: dict[str, Any] = {
            "command": spec.command or None,
            "environment": env,
            "labels": labels,
            "name": f"conveyor-{spec.task_id}-{spec.attempt}-{os.urandom(3).hex()}",
            "init": True,
            "detach": True,
            # the sandbox: a uid of no account, no capabilities, no way to gain any,
            # a bounded number of processes, and no folder of the host (no volumes)
            "user": self.user,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "pids_limit": self.pids_limit,
        }
        if spec.workdir:
            kwargs["working_dir"] = spec.workdir
        if spec.network:
            kwargs["network_mode"] = spec.network
        if spec.memory:
            kwargs["mem_limit"] = spec.memory
            kwargs["memswap_limit"] = spec.memory  # no swap beyond the limit
        if spec.cpus:
            kwargs["nano_cpus"] = int(spec.cpus * 1e9)
        if spec.shm_size:
            kwargs["shm_size"] = spec.shm_size
        if spec.gpus:
            kwargs["device_requests"] = [
                DeviceRequest(driver="nvidia", device_ids=spec.gpus, capabilities=[["gpu"]])
            ]
        try:
            return self.client.containers.create(image, **kwargs)
        except ImageNotFound as exc:
            log.warning("image %s not found at create: %s", spec.image, exc)
            raise RunnerError(f"image {spec.image} not found", retryable=False) from exc
        except APIError as exc:
            log.warning("could not create a container of %s: %s", spec.image, exc)
            retryable = exc.status_code is None or exc.status_code >= 500
            raise RunnerError(
                f"could not create the container: {brief(exc)}", retryable=retryable
            ) from exc
        except DockerException as exc:
            log.warning("container engine unavailable: %s", exc)
            raise RunnerError(f"container engine unavailable: {brief(exc, 120)}") from exc

    def _put_files(self, container: Container, spec: RunSpec) -> None:
        """The inputs, the output folder (the job's, with its checkpoints) and a home
        folder, put into the created container: nothing of the host is mounted."""
        uid, gid = parse_user(self.user)
        tar = job_tar(
            spec.work_dir / "job.tar",
            inputs=spec.input_dir,
            input_dir=INPUT_DIR,
            outputs=spec.output_dir,
            output_dir=spec.outputs,
            home=HOME_DIR,
            uid=uid,
            gid=gid,
        )
        try:
            with open(tar, "rb") as fh:
                ok = container.put_archive("/", fh)
        except APIError as exc:
            log.warning("could not put the job's files into %s: %s", container.name, exc)
            retryable = exc.status_code is None or exc.status_code >= 500
            raise RunnerError(
                f"could not put the inputs into the container: {brief(exc)}",
                retryable=retryable,
            ) from exc
        except DockerException as exc:
            raise RunnerError(f"container engine unavailable: {brief(exc, 120)}") from exc
        finally:
            tar.unlink(missing_ok=True)
        if not ok:
            raise RunnerError("the engine refused the job's files")

    @staticmethod
    def _pump(container: Container, stream: str, splitter: LineSplitter) -> None:
        try:
            for chunk in container.logs(
                stream=True, follow=True, stdout=stream == "stdout", stderr=stream == "stderr"
            ):
                splitter.feed(chunk)
        except DockerException:
            log.debug("log stream of %s ended", container.name, exc_info=True)
        finally:
            splitter.close()

    def _remove(self, container: Container) -> None:
        """Remove the container and check that it is gone; a few tries if the engine is busy."""
        for _ in range(10):
            try:
                container.remove(force=True, v=True)
            except NotFound:
                return
            except DockerException:
                log.warning(
                    "could not remove container %s; retrying", container.name, exc_info=True
                )
            try:
                self.client.containers.get(container.id or "")
            except NotFound:
                return
            except DockerException:
                pass
            time.sleep(0.5)
        log.error("container %s survived removal; the orphan reaper will retry", container.name)

    # -- orphans -------------------------------------------------------------------
    def reap_orphans(self) -> int:
        """Remove containers of this host whose worker process is gone.

        A worker killed with SIGKILL cannot remove its container; the lease on
        its task expires and another worker takes the task, while the old
        container would keep running (and holding its GPU) without this.
        """
        try:
            found = self.client.containers.list(
                all=True,
                filters={"label": [f"{LABEL}.managed=1", f"{LABEL}.host={self.hostname}"]},
            )
        except DockerException:
            log.warning("could not list containers to reap orphans", exc_info=True)
            return 0
        removed = 0
        me = os.getpid()
        for c in found:
            labels = c.labels or {}
            try:
                pid = int(labels.get(f"{LABEL}.pid", "0"))
            except ValueError:
                pid = 0
            with _active_lock:
                ours = c.id in _active
            if ours or (pid != me and pid > 0 and _pid_alive(pid)):
                continue
            if pid == me and (c.status or "") in ("created",):
                continue  # being started by a thread of ours right now
            log.warning(
                "Removing orphan container %s (task %s attempt %s, worker %s gone)",
                c.name,
                labels.get(f"{LABEL}.task"),
                labels.get(f"{LABEL}.attempt"),
                labels.get(f"{LABEL}.worker"),
            )
            self._remove(c)
            removed += 1
        return removed

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
