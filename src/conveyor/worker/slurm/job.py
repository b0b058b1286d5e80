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
    from conveyor.backends.base import Completion
    from conveyor.remote.queue import LogsPartlyShipped, RemoteQueue

    class OneAttemptQueue(RemoteQueue):
        """The worker protocol for one claimed attempt: ``claim`` hands it out once; cancels
        are the executor's (scancel, then the outcome once Slurm says the job ended); once
        Slurm signalled the job, nothing more is reported.

        Its first ``quiet_s`` (a heartbeat interval) it makes no call but the outcome's:
        the lease was checked a moment ago (the task was read with it) and the executor
        renews it; log lines wait for the first heartbeat after that, or go with the
        outcome; progress is sent at most once a second, the latest report only, and not
        at all once the outcome is on its way.  A short task costs the API four calls
        (its read, and the completion's fenced check, log lines and record), not ten."""

        def __init__(
            self, conn: Any, claimed: ClaimedTask, on_cancel: Any, quiet_s: float = 0.0
        ) -> None:
            super().__init__(conn)
            self._worker_id = claimed.lease.worker_id  # log shipping names it from the start
            self._claimed: ClaimedTask | None = claimed
            self._on_cancel = on_cancel
            self.stopped_by_slurm = threading.Event()
            self.handed_out = threading.Event()
            self.no_more = threading.Event()  # the attempt is over: the claim loop ends
            self._quiet_until = time.monotonic() + max(0.0, quiet_s)
            self._held: list[tuple[datetime, str, str]] = []
            self._held_lock = threading.Lock()
            self._lost = False
            self._progress: tuple[Lease, Progress] | None = None
            self._progress_due = self._quiet_until
            self._progress_cv = threading.Condition()
            self._progress_thread: threading.Thread | None = None

        def _quiet(self) -> bool:
            return time.monotonic() < self._quiet_until

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
            self.no_more.wait(min(timeout, 1.0))  # nothing more will come

        def heartbeat(
            self, worker: WorkerInfo, leases: list[Lease], lease_s: float
        ) -> HeartbeatResult:
            if not leases or self._quiet():
                # nothing to renew (the attempt is over), or renewed a moment ago
                return HeartbeatResult(lost=[le.task_id for le in leases] if self._lost else [])
            result = super().heartbeat(worker, leases, lease_s)
            if result.cancel and not self.stopped_by_slurm.is_set():
                # the executor scancels and records the cancel once the job ended; here the
                # processor is stopped at once (as a shutdown, which reports nothing)
                log.info("Cancel requested: stopping; the executor records the outcome")
                self.stopped_by_slurm.set()
                self._on_cancel()
            return result.model_copy(update={"cancel": []})

        # -- progress: the latest report, at most once a second ------------------------
        def progress(self, lease: Lease, progress: Progress) -> None:
            if self._progress_due == float("inf"):  # the outcome's own fenced check
                return super().progress(lease, progress)
            if self._lost:
                raise LeaseLost(f"lease on task {lease.task_id} is no longer held by this job")
            with self._progress_cv:
                self._progress = (lease, progress)
                if self._progress_thread is None:
                    self._progress_thread = threading.Thread(
                        target=self._send_progress, name="job-progress", daemon=True
                    )
                    self._progress_thread.start()
                self._progress_cv.notify()

        def _send_progress(self) -> None:
            while True:
                with self._progress_cv:
                    while self._progress is None or time.monotonic() < self._progress_due:
                        due = self._progress_due
                        wait = None if self._progress is None or due == float("inf") else due
                        self._progress_cv.wait(None if wait is None else wait - time.monotonic())
                    lease, report = self._progress
                    self._progress = None
                    self._progress_due = time.monotonic() + 1.0
                try:
                    super().progress(lease, report)
                except LeaseLost:
                    self._lost = True  # the next heartbeat says so to the worker
                except Exception as exc:  # best effort, as any worker's progress
                    log.warning("progress not recorded: %s", exc)

        def _outcome_begins(self) -> None:
            """The outcome is on its way: no progress report is left to send (the outcome
            says the rest); its own calls (the fenced check, the log lines) go at once."""
            self._quiet_until = 0.0
            with self._progress_cv:
                self._progress = None
                self._progress_due = float("inf")

        # -- log lines: held while quiet, then shipped with the next batch -------------
        def _take_held(self) -> list[tuple[datetime, str, str]]:
            with self._held_lock:
                held, self._held = self._held, []
            return held

        def append_logs(
            self, task_id: str, attempt: int, lines: list[tuple[datetime, str, str]]
        ) -> None:
            if self._quiet():
                with self._held_lock:
                    self._held.extend(lines)
                return
            held = self._take_held()
            try:
                self._ship(task_id, attempt, held + lines)
            except Exception as exc:
                sent = getattr(exc, "sent", 0)
                with self._held_lock:
                    self._held[:0] = held[sent:]
                # the worker keeps its own lines from the first one not shipped
                raise LogsPartlyShipped(max(0, sent - len(held)), exc) from exc

        def _ship(self, task_id: str, attempt: int, lines: list[tuple[datetime, str, str]]) -> None:
            if not lines:
                return
            if self.stopped_by_slurm.is_set():  # the worker says "released": it was not
                lines = [
                    (ts, stream, _stopped_line(line) if stream == "worker" else line)
                    for ts, stream, line in lines
                ]
            super().append_logs(task_id, attempt, lines)

        def flush_held(self, lease: Lease) -> None:
            """What is still held goes out (the job ends)."""
            held = self._take_held()
            try:
                self._ship(lease.task_id, lease.attempt, held)
            except Exception as exc:
                log.warning("%d log lines not shipped: %s", len(held), exc)

        # -- outcomes: the held lines first ----------------------------------------------
        def complete_many(self, items: list[Completion]) -> list[BaseException | None]:
            self._outcome_begins()
            held = self._take_held()
            if held and items:
                items[0].logs[:0] = held
            return super().complete_many(items)

        def fail(
            self, lease: Lease, error: str, *, retryable: bool, code: str | None = None
        ) -> Task:
            self._outcome_begins()
            if self.stopped_by_slurm.is_set():
                raise LeaseLost("stopped by Slurm: the executor records the outcome")
            self._ship(lease.task_id, lease.attempt, self._take_held())
            return super().fail(lease, error, retryable=retryable, code=code)

        def release(self, lease: Lease, *, delay_s: float = 0.0, error: str | None = None) -> Task:
            self._outcome_begins()
            if self.stopped_by_slurm.is_set():
                raise LeaseLost("stopped by Slurm: the executor records the outcome")
            self._ship(lease.task_id, lease.attempt, self._take_held())
            return super().release(lease, delay_s=delay_s, error=error)

    return OneAttemptQueue


STOPPED = (
    "the Slurm job was stopped (scancel, time limit or cancel); the executor records the "
    "outcome once Slurm says the job ended"
)


def _stopped_line(line: str) -> str:
    """The worker's outcome lines of an attempt Slurm stopped: it neither released it
    nor failed it (the signal reached the command too, which may end first)."""
    if line.startswith("Task released: ") and line.endswith("worker shutting down"):
        return line.replace("Task released", "Task stopped", 1).rsplit(":", 1)[0] + f": {STOPPED}"
    if line.startswith("Task failed: "):
        return line.replace("Task failed", "Task stopped", 1) + f" ({STOPPED})"
    return line


def main() -> int:
    raw = os.environ.pop(SPEC_ENV, None)  # before any child could inherit it
    # httpx imports its command line (click, rich: ~30 ms of a job's CPU) when it can;
    # a job never runs it, so httpx falls back to its stub
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
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
    """The kind's processor class: the only kind this job loads (``CONVEYOR_LOAD_KINDS``,
    set by the executor with the class's module: no other kind's libraries are imported,
    no package's entry points read)."""
    from conveyor.processors import installed

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
    queue = _queue_class()(
        conn,
        ClaimedTask(task=task, lease=lease),
        stop.set,
        # well inside the lease: the worker's own lease check renews it after lease_s * 3/4
        quiet_s=min(float(settings.heartbeat_interval), float(settings.lease_seconds) / 4),
    )
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
    # shown once the job is past its quiet start, unless the processor said more by then
    queue.progress(
        lease, Progress(percent=0.0, phase="starting", message=f"Slurm job {job_id} on {host}")
    )
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
    queue.no_more.set()
    worker.stop(grace=0.0)
    queue.flush_held(lease)
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
