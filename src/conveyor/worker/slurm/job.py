"""``python -m conveyor.worker.slurm.job``: one attempt of one task, inside a Slurm job.

The executor's batch script runs this on the compute node.  It needs the API's URL
and nothing else of the site: ``CONVEYOR_SLURM_JOB`` (removed from the environment
before anything else runs) holds the URL, a credential that speaks for this task and
attempt only, and the lease.  It reads its task from the API, then runs it with a
:class:`~conveyor.worker.loop.Worker` of concurrency 1 whose queue hands out that one
claimed task (:class:`OneAttemptQueue`): the same processors, staging, progress, log
shipping, lease checks and outcome reports as any worker, over the remote-worker
protocol.  Its log lines reach the task's log while it runs (every heartbeat), not
through a shared filesystem.

What it leaves to the executor: when Slurm stops the job (its time limit, scancel,
preemption: SIGTERM), or Conveyor asks to cancel the task, it stops the processor and
exits without reporting; the executor records the outcome once Slurm says the job
ended (``conveyor.worker.slurm.states``).

Exit codes: 0 when the attempt was run (whatever its outcome) or was already over;
2 when it could not start (no spec, the API unreachable); 3 when the API refused its
credential.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from datetime import datetime
from typing import Any

from conveyor.errors import ConveyorError, LeaseLost, WorkerCredentialRejected
from conveyor.models import ClaimedTask, HeartbeatResult, Lease, Progress, Task, WorkerInfo

from .jobspec import SPEC_ENV, JobSpec

log = logging.getLogger("conveyor.slurm.job")

# the job's own timer never fires before Slurm's time limit (which ends as TIMEOUT)
OVER_LIMIT_S = 600.0


def _queue_class() -> Any:
    from conveyor.remote.queue import RemoteQueue

    class OneAttemptQueue(RemoteQueue):
        """The worker protocol for one claimed attempt: ``claim`` hands it out once; cancels
        are the executor's (scancel, then the outcome once Slurm says the job ended); once
        Slurm signalled the job, nothing more is reported."""

        def __init__(self, conn: Any, claimed: ClaimedTask, on_cancel: Any) -> None:
            super().__init__(conn)
            self._worker_id = claimed.lease.worker_id  # log shipping names it from the start
            self._claimed: ClaimedTask | None = claimed
            self._on_cancel = on_cancel
            self.stopped_by_slurm = threading.Event()
            self.handed_out = threading.Event()

        def claim(
            self,
            worker_id: str,
            kinds: list[str],
            capacity: int,
            lease_s: float,
            max_gpus: int | None = None,
        ) -> list[ClaimedTask]:
            claimed, self._claimed = self._claimed, None
            if claimed is None:
                return []
            self.handed_out.set()
            return [claimed]

        def wait_for_work(self, timeout: float) -> None:
            time.sleep(min(timeout, 0.05))  # nothing more will come: stop() is not kept

        def heartbeat(
            self, worker: WorkerInfo, leases: list[Lease], lease_s: float
        ) -> HeartbeatResult:
            result = super().heartbeat(worker, leases, lease_s)
            if result.cancel and not self.stopped_by_slurm.is_set():
                # the executor scancels and records the cancel once the job ended; here the
                # processor is stopped at once (as a shutdown, which reports nothing)
                log.info("Cancel requested: stopping; the executor records the outcome")
                self.stopped_by_slurm.set()
                self._on_cancel()
            return result.model_copy(update={"cancel": []})

        def append_logs(
            self, task_id: str, attempt: int, lines: list[tuple[datetime, str, str]]
        ) -> None:
            if self.stopped_by_slurm.is_set():  # the worker says "released": it was not
                lines = [
                    (ts, stream, _stopped_line(line) if stream == "worker" else line)
                    for ts, stream, line in lines
                ]
            super().append_logs(task_id, attempt, lines)

        def fail(
            self, lease: Lease, error: str, *, retryable: bool, code: str | None = None
        ) -> Task:
            if self.stopped_by_slurm.is_set():
                raise LeaseLost("stopped by Slurm: the executor records the outcome")
            return super().fail(lease, error, retryable=retryable, code=code)

        def release(self, lease: Lease, *, delay_s: float = 0.0, error: str | None = None) -> Task:
            if self.stopped_by_slurm.is_set():
                raise LeaseLost("stopped by Slurm: the executor records the outcome")
            return super().release(lease, delay_s=delay_s, error=error)

    return OneAttemptQueue


def _stopped_line(line: str) -> str:
    if line.startswith("Task released: ") and line.endswith("worker shutting down"):
        return (
            line.replace("Task released", "Task stopped", 1).rsplit(":", 1)[0]
            + ": the Slurm job was stopped (scancel, time limit or cancel); the executor "
            "records the outcome once Slurm says the job ended"
        )
    return line


def main() -> int:
    raw = os.environ.pop(SPEC_ENV, None)  # before any child could inherit it
    if not raw:
        print(f"{SPEC_ENV} is not set: this runs inside a job the Slurm executor submitted")
        return 2
    try:
        spec = JobSpec.decode(raw)
    except (ValueError, KeyError, TypeError) as exc:
        print(f"{SPEC_ENV} is not a job spec: {exc}")
        return 2
    return run(spec)


def _processor_class(kind: str) -> Any:
    """The kind's processor class, loading only its entry point (a job starts in a third
    of a second instead of importing every kind)."""
    from importlib.metadata import entry_points

    from conveyor.processors import ENTRY_POINT_GROUP, installed

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == kind:
            return ep.load()
    return installed().get(kind)


def run(spec: JobSpec) -> int:
    from conveyor.config import load_settings
    from conveyor.logs import setup_logging
    from conveyor.processors import ProcessorRegistry
    from conveyor.remote.connection import ApiConnection
    from conveyor.remote.storage import RemoteBlobStore
    from conveyor.worker.loop import Worker

    job_id = os.environ.get("SLURM_JOB_ID", "?")
    host = socket.gethostname()
    # bandit B108: the compute node's scratch, where Slurm did not name one
    scratch = os.environ.get("TMPDIR") or "/tmp"  # nosec B108
    # the GPUs Slurm gave this job are the ones it hands out
    if os.environ.get("CUDA_VISIBLE_DEVICES") and "CONVEYOR_GPUS" not in os.environ:
        os.environ["CONVEYOR_GPUS"] = os.environ["CUDA_VISIBLE_DEVICES"]
    settings = load_settings(backend_url=spec.api, temp_dir=scratch, max_concurrent_tasks=1)
    setup_logging(settings.log_level, settings.log_format)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    lease = spec.lease
    conn = ApiConnection(spec.api, credential=spec.credential, ca_cert=spec.ca_cert)
    log.info(
        "Slurm job %s on %s: task %s attempt %d for %s",
        job_id,
        host,
        lease.task_id,
        lease.attempt,
        lease.worker_id,
    )
    try:
        resp = conn.send("GET", f"/api/worker/v1/tasks/{lease.task_id}", idempotent=True)
        task = Task.model_validate(resp.json())
    except LeaseLost as exc:
        log.warning("Nothing to run: %s", exc.message)
        return 0
    except WorkerCredentialRejected as exc:
        log.error("The API refused this job's credential: %s", exc.message)
        return 3
    except ConveyorError as exc:
        log.error("Cannot start: %s", exc.message)
        return 2
    # Slurm enforces the time limit (TIMEOUT); the worker's own timer comes after it
    limit_s = (spec.time_limit_min or 0) * 60.0
    if limit_s:
        task = task.model_copy(
            update={"params": {**task.params, "timeout_s": limit_s + OVER_LIMIT_S}}
        )
    proc_cls = _processor_class(task.kind)
    if proc_cls is None:
        return _refuse(conn, lease, f"this compute node ({host}) has no {task.kind} kind")
    processor = proc_cls(settings)
    if processor.probe() is None:
        why = str(getattr(processor, "unavailable_reason", "") or "")
        return _refuse(conn, lease, f"this compute node ({host}) cannot run {task.kind}: {why}")
    stop = threading.Event()
    queue = _queue_class()(conn, ClaimedTask(task=task, lease=lease), stop.set)
    worker = Worker(
        settings,
        queue,
        RemoteBlobStore(conn),
        ProcessorRegistry({task.kind: processor}),
        worker_id=lease.worker_id,
        concurrency=1,
        kinds=[task.kind],
    )

    def _on_signal(signum: int, _frame: object) -> None:
        log.info(
            "Slurm sent %s: stopping; the executor records the outcome",
            signal.Signals(signum).name,
        )
        queue.stopped_by_slurm.set()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_signal)
    try:
        queue.progress(
            lease, Progress(percent=0.0, phase="starting", message=f"Slurm job {job_id} on {host}")
        )
    except LeaseLost as exc:
        log.warning("Nothing to run: %s", exc.message)
        return 0
    worker.start()
    deadline = time.monotonic() + 30
    # until the worker holds the attempt, then until it is done with it
    while not stop.is_set() and time.monotonic() < deadline:
        if queue.handed_out.is_set() and worker.info().running:
            break
        stop.wait(0.05)
    while not stop.wait(0.1):
        if worker.fatal is not None or not worker.info().running:
            break
    worker.stop(grace=0.0)
    if worker.fatal is not None:
        return 3
    return 0


def _refuse(conn: Any, lease: Lease, why: str) -> int:
    """This node cannot run the kind: the attempt fails, retried (another node may)."""
    from conveyor.remote.queue import RemoteQueue

    log.error("%s", why)
    try:
        RemoteQueue(conn).fail(lease, why, retryable=True, code="slurm_node_unable")
    except ConveyorError as exc:
        log.error("could not report it: %s", exc.message)
    return 0


def exit_now(code: int) -> None:
    """End the process without the interpreter's teardown: every report is made by now
    (the worker stopped), and tearing down a few thousand modules costs a job as much
    as half a second, a start of the next job later."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
