"""The Docker runner: one container per attempt through the Engine API.

Works with Docker and with Podman's compatible socket (``DOCKER_HOST``).
Every container carries labels naming its task, attempt, worker, host and
worker PID, so a worker that starts (and then every few minutes) removes the
containers that dead workers on its host left behind. A container is removed
in every outcome and the removal is checked; ``init`` is on so that a shell
as PID 1 passes SIGTERM on instead of swallowing it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from typing import Any

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.models.containers import Container
from docker.types import DeviceRequest

from .runner import LineSplitter, OnLine, Runner, RunnerError, RunResult, RunSpec

log = logging.getLogger(__name__)

LABEL = "io.conveyor"
_active: set[str] = set()  # containers this process supervises now: never orphans
_active_lock = threading.Lock()


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

    def __init__(self, host: str | None = None) -> None:
        self.host = host or None
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
    def run(self, spec: RunSpec, on_line: OnLine, stop: threading.Event) -> RunResult:
        if not spec.image:
            raise RunnerError("the docker runner needs an image", retryable=False)
        self._ensure_image(spec.image, on_line)
        container = self._create(spec, spec.image)
        with _active_lock:
            _active.add(container.id or "")
        started = time.monotonic()
        try:
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
                detail = exc.explanation or str(exc)
                raise RunnerError(
                    f"could not start the job: {detail}", retryable=retryable
                ) from exc
            for t in pumps:
                t.start()
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
                raise RunnerError(f"lost the container while waiting: {waited['error']}")
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
            return RunResult(
                exit_code=None if stopped else (int(code) if code is not None else None),
                oom_killed=bool(state.get("OOMKilled")),
                stopped=stopped,
                duration_s=time.monotonic() - started,
            )
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
            raise RunnerError(f"container engine unavailable: {exc}") from exc
        on_line("worker", f"Pulling image {image}")
        try:
            self.client.images.pull(image)
        except (ImageNotFound, NotFound) as exc:
            raise RunnerError(f"image {image} not found: {exc}", retryable=False) from exc
        except DockerException as exc:
            raise RunnerError(f"could not pull image {image}: {exc}") from exc

    def _create(self, spec: RunSpec, image: str) -> Container:
        labels = {
            f"{LABEL}.managed": "1",
            f"{LABEL}.task": spec.task_id,
            f"{LABEL}.attempt": str(spec.attempt),
            f"{LABEL}.worker": spec.worker_id,
            f"{LABEL}.host": self.hostname,
            f"{LABEL}.pid": str(os.getpid()),
        }
        kwargs: dict[str, Any] = {
            "command": spec.command or None,
            "environment": {
                **spec.env,
                "CONVEYOR_INPUT_DIR": "/conveyor/inputs",
                "CONVEYOR_OUTPUT_DIR": spec.outputs,
            },
            "labels": labels,
            "name": f"conveyor-{spec.task_id}-{spec.attempt}-{os.urandom(3).hex()}",
            "init": True,
            "detach": True,
            "volumes": {
                str(spec.input_dir): {"bind": "/conveyor/inputs", "mode": "ro"},
                str(spec.output_dir): {"bind": spec.outputs, "mode": "rw"},
            },
        }
        if spec.workdir:
            kwargs["working_dir"] = spec.workdir
        if spec.network:
            kwargs["network_mode"] = spec.network
        if spec.memory:
            kwargs["mem_limit"] = spec.memory
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
            raise RunnerError(f"image {spec.image} not found: {exc}", retryable=False) from exc
        except APIError as exc:
            retryable = exc.status_code is None or exc.status_code >= 500
            raise RunnerError(
                f"could not create the container: {exc}", retryable=retryable
            ) from exc
        except DockerException as exc:
            raise RunnerError(f"container engine unavailable: {exc}") from exc

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
