"""The Slurm executor: a worker on a login node whose attempts run as Slurm jobs.

It behaves as any worker towards the API: it claims (its capacity, ``--concurrency``,
is how many jobs it may have in Slurm at once), heartbeats every lease it holds in one
call, learns about cancels and lost leases, ships each task's log lines and reports
outcomes, all through the worker protocol (a ``WorkerQueue``).  Where a worker would
run the processor, it submits a Slurm job that runs that one attempt on a compute node
(:mod:`conveyor.worker.slurm.job`) and watches it:

* before submitting, it asks the API for a credential scoped to that task and attempt
  (``POST /api/worker/v1/task-credential``) and gives the job that, the API's URL and
  the lease, nothing else; the job reports its own progress, log lines, staged outputs
  and outcome through the worker protocol, and renews its own lease while it runs;
* one ``squeue`` a poll (:class:`JobBoard`) tells it the state of all its jobs; a
  PENDING job's reason becomes the task's waiting reason (progress phase ``scheduler``,
  ``conveyor.service.waiting``);
* a job that ended without reporting (TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, PREEMPTED,
  CANCELLED from Slurm's side, FAILED before it could speak) gets the outcome
  :func:`conveyor.worker.slurm.states.outcome` gives;
* cancel in Conveyor → ``scancel``; the task is cancelled when Slurm says the job
  ended, not before;
* a lost lease (another worker took the task) → ``scancel`` after a short grace (the
  job may just have reported and be exiting);
* it keeps each attempt's lease in a 0600 file (:mod:`.records`) so that, restarted
  after a crash, it adopts its jobs (found by their name and comment) instead of
  submitting them again, and cancels the jobs whose task another worker took meanwhile.

It is its own loop, not a subclass of the process worker (``conveyor.worker.loop``):
it runs no processor, holds no work folders, and its attempts live for hours in Slurm's
queue; it shares the worker's rules through the backend contract only.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from conveyor import __version__, outputs
from conveyor.backends.base import WorkerQueue
from conveyor.errors import LeaseLost, RemoteUnavailable, WorkerCredentialRejected
from conveyor.logs import current_attempt, current_task, current_worker
from conveyor.models import SCHEDULER_PHASE, Lease, Progress, Task, WorkerInfo, utcnow
from conveyor.remote.connection import ApiConnection
from conveyor.worker.until_signalled import run_until_signalled

from . import jobspec, states
from .adapter import SlurmAdapter, SlurmError, SlurmJob
from .records import JobRecord, JobRecords

log = logging.getLogger("conveyor.slurm")

# after a lost lease, how long a still-running job may take to end by itself (it may have
# just reported its outcome) before it is cancelled as another attempt's duplicate
LOST_GRACE_S = 10.0
# how many of the job's output lines go to the task log when it ended without reporting
OUTPUT_TAIL = 20
CLUSTER_REFRESH_S = 60.0
# a pending job's reason is noted (task log, waiting reason) at most this often
NOTE_EVERY_S = 10.0
# what Slurm answers when it refuses a job (no retry helps), not when it is unreachable
_REFUSALS = ("submission failed", "refused the job", "Invalid", "invalid", "not available")
INFRA_PREFIX = "infrastructure unavailable: "
OUTAGE_DELAY_S = 30.0


class JobBoard:
    """The state of every job of one executor, from one ``squeue`` per poll."""

    def __init__(self, slurm: SlurmAdapter, worker_id: str, poll_s: float) -> None:
        self.slurm = slurm
        self.worker_id = worker_id
        self.poll_s = max(0.2, poll_s)
        self.jobs: dict[str, SlurmJob] = {}
        self.generation = 0
        self.error: str | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def ours(self, job: SlurmJob) -> tuple[str, int] | None:
        """``(task id, attempt)`` of one of this executor's jobs, else None."""
        if not job.name.startswith(jobspec.NAME_PREFIX):
            return None
        parsed = jobspec.parse_comment(job.comment)
        if parsed is None or parsed[2] != self.worker_id:
            return None
        return parsed[0], parsed[1]

    def refresh(self) -> dict[str, SlurmJob]:
        jobs = {j.job_id: j for j in self.slurm.jobs() if self.ours(j) is not None}
        with self._cond:
            self.jobs = jobs
            self.generation += 1
            self.error = None
            self._cond.notify_all()
        return jobs

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="slurm-board", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception as exc:  # Slurm down a moment: keep the last view, say so
                with self._cond:
                    self.error = str(exc)
                    self.generation += 1
                    self._cond.notify_all()
                log.warning("reading Slurm's queue failed: %s", exc)
            self._stop.wait(self.poll_s)

    def wait(
        self, job_id: str, since: int, timeout: float, wake: threading.Event
    ) -> tuple[SlurmJob | None, int]:
        """The job's state after the refresh following generation ``since`` (or at
        ``timeout``, or as soon as ``wake`` is set): ``(job or None, generation)``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.generation <= since and not wake.is_set() and not self._stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.25))
            return self.jobs.get(job_id), self.generation


@dataclass
class Attempt:
    """One attempt this executor holds: its task, lease and job."""

    task: Task
    lease: Lease
    rec: JobRecord
    wake: threading.Event = field(default_factory=threading.Event)
    cancel: bool = False  # Conveyor asked to cancel the task
    lost: bool = False  # the lease is gone (another attempt owns the task, or it ended)
    logs: list[tuple[datetime, str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class SlurmExecutor:
    def __init__(
        self,
        settings: Any,
        queue: WorkerQueue,
        *,
        slurm: SlurmAdapter,
        cfg: jobspec.SlurmConfig,
        conn: ApiConnection,
        worker_id: str,
        kinds: list[str],
        concurrency: int | None = None,
        secrets_of: Callable[[Task], list[str]] | None = None,
        state_root: Path | None = None,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.slurm = slurm
        self.cfg = cfg
        self.conn = conn
        self.id = jobspec.check_worker_id(worker_id)
        self.kinds = kinds
        self.concurrency = concurrency or settings.max_concurrent_tasks
        self.lease_s = float(settings.lease_seconds)
        self.secrets_of = secrets_of or (lambda _task: [])
        root = state_root or Path(settings.data_dir) / "slurm"
        self.records = JobRecords.for_worker(root, worker_id)
        self.board = JobBoard(slurm, worker_id, cfg.poll_s)
        self.gpus = 0
        self.max_node_gpus = 0
        self.capabilities: dict[str, Any] = {
            "slurm": {
                "partition": cfg.partition,
                "account": cfg.account,
                "qos": cfg.qos,
                "adapter": slurm.kind,
            }
        }
        self.started_at = utcnow()
        self.fatal: WorkerCredentialRejected | None = None
        self._attempts: dict[str, Attempt] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._slot_freed = threading.Event()
        self._done = threading.Event()
        self._threads: list[threading.Thread] = []
        self._jobs: list[threading.Thread] = []
        self._last_cluster = 0.0
        self.refresh_cluster()

    # -- what this executor offers ---------------------------------------------------
    def refresh_cluster(self) -> None:
        """GPUs of the partition's usable nodes: what it tells the API (so a task needing
        more than any node has waits, with that reason, instead of being refused by
        sbatch), and the most GPUs one claimed task may ask for."""
        self._last_cluster = time.monotonic()
        try:
            view = self.slurm.cluster()
        except Exception as exc:
            log.warning("could not read the Slurm cluster: %s", exc)
            return
        part = self.cfg.partition
        members = {n for p in view.partitions if p.name == part for n in p.nodes}
        nodes = [n for n in view.nodes if part is None or part in n.partitions or n.name in members]
        usable = [n for n in nodes if n.available]
        self.max_node_gpus = max((n.gpus for n in usable), default=0)
        self.gpus = sum(n.gpus for n in usable)
        self.capabilities["slurm"] = dict(
            self.capabilities["slurm"],
            nodes=len(nodes),
            nodes_up=len(usable),
            cpus=sum(n.cpus for n in usable),
            gpus=self.gpus,
            gpus_free=sum(n.gpus_free for n in usable),
        )

    def running(self) -> list[Attempt]:
        with self._lock:
            return list(self._attempts.values())

    def info(self) -> WorkerInfo:
        if time.monotonic() - self._last_cluster > CLUSTER_REFRESH_S:
            # on its own thread: the heartbeat that asks must not wait for scontrol, which
            # took seconds on a loaded login node and let a 4 s lease expire
            self._last_cluster = time.monotonic()
            threading.Thread(target=self.refresh_cluster, name="slurm-cluster", daemon=True).start()
        attempts = self.running()
        caps = {**self.capabilities, "slurm": {**self.capabilities["slurm"], "jobs": len(attempts)}}
        return WorkerInfo(
            id=self.id,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            kinds=self.kinds,
            concurrency=self.concurrency,
            running=[a.task.id for a in attempts],
            capabilities=caps,
            started_at=self.started_at,
            version=__version__,
            gpus=self.gpus,
            gpus_in_use=sum(a.task.gpus for a in attempts),
        )

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self.board.refresh()  # fails at start when Slurm cannot be read
        self._adopt()
        self.board.start()
        log.info(
            "Slurm executor %s started: partition=%s kinds=%s jobs at once=%d (%s)",
            self.id,
            self.cfg.partition or "(default)",
            ",".join(self.kinds),
            self.concurrency,
            self.slurm.kind,
        )
        for target, name in ((self._claim_loop, "claim"), (self._heartbeat_loop, "heartbeat")):
            t = threading.Thread(target=target, name=f"slurm-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        """Stop claiming and watching.  The jobs keep running: their leases are renewed
        by the running jobs themselves, and a restarted executor adopts them."""
        self._stopping.set()
        for a in self.running():
            a.wake.set()
        for t in list(self._jobs):
            t.join(timeout=10)
        self._stopped.set()
        for t in self._threads:
            t.join(timeout=10)
        self.board.stop()

    def run_forever(self) -> None:
        run_until_signalled(self.start, self.stop, self._done)

    def _adopt(self) -> None:
        """After a restart: take back the jobs this executor left in Slurm, by their name
        and comment, with the leases kept in its records; cancel those whose task
        another worker took meanwhile, and those it has no lease for."""
        by_attempt = {self.board.ours(j): j for j in self.board.jobs.values()}
        records = self.records.all()
        held: set[str] = set()
        if records:
            result = self.queue.heartbeat(self.info(), [r.lease for r in records], self.lease_s)
            held = set(result.renewed)
        known: set[tuple[str, int]] = set()
        for rec in records:
            key = (rec.task.id, rec.lease.attempt)
            known.add(key)
            job = by_attempt.get(key)
            if rec.task.id not in held:
                if job is not None and job.active:
                    log.warning(
                        "Slurm job %s: task %s attempt %d was taken by another worker while "
                        "this executor was away; cancelling the job",
                        job.job_id,
                        key[0],
                        key[1],
                    )
                    self._scancel(job.job_id)
                self.records.drop(*key)
                continue
            if job is not None and rec.job_id != job.job_id:
                rec.job_id = job.job_id  # it died between sbatch and writing the id down
                self.records.put(rec)
            log.info(
                "Adopting task %s attempt %d: Slurm job %s (%s)",
                key[0],
                key[1],
                rec.job_id or "not submitted yet",
                job.state if job is not None else "not in squeue",
            )
            self._launch(rec.task, rec.lease, rec)
        for ours, job in by_attempt.items():
            if ours is None or ours in known or not job.active:
                continue
            # no lease for it here (its record is gone): nothing can speak for its attempt,
            # so it is cancelled; its lease expires and the task is retried once
            log.warning(
                "Slurm job %s runs task %s attempt %d for this executor but its lease is not "
                "known here; cancelling it",
                job.job_id,
                ours[0],
                ours[1],
            )
            self._scancel(job.job_id)

    # -- loops ---------------------------------------------------------------------------
    def _claim_loop(self) -> None:
        current_worker.set(self.id)
        while not self._stopping.is_set():
            try:
                free = self.concurrency - len(self.running())
                if free <= 0:
                    self._slot_freed.wait(self.settings.poll_interval)
                    self._slot_freed.clear()
                    continue
                claimed = self.queue.claim(
                    self.id, self.kinds, free, self.lease_s, max_gpus=self.max_node_gpus
                )
                if self._stopping.is_set():
                    for c in claimed:
                        self.queue.release(c.lease)
                    break
                for c in claimed:
                    self._launch(c.task, c.lease, None)
                if not claimed:
                    self.queue.wait_for_work(self.settings.poll_interval)
            except WorkerCredentialRejected as exc:
                self._credential_rejected(exc)
                break
            except Exception:
                log.exception("claim loop error; retrying")
                self._stopping.wait(min(5.0, self.settings.poll_interval))

    def _heartbeat_loop(self) -> None:
        current_worker.set(self.id)
        while not self._stopped.is_set():
            try:
                self.heartbeat_once()
            except WorkerCredentialRejected as exc:
                self._credential_rejected(exc)
                return
            except Exception:
                log.exception("heartbeat failed; will retry")
            self._stopped.wait(self.settings.heartbeat_interval)

    def heartbeat_once(self) -> None:
        attempts = self.running()
        for a in attempts:
            self._flush_logs(a)
        result = self.queue.heartbeat(self.info(), [a.lease for a in attempts], self.lease_s)
        by_id = {a.task.id: a for a in attempts}
        for task_id in result.cancel:
            held = by_id.get(task_id)
            if held is not None and not held.cancel:
                log.info("Cancel requested for task %s", task_id)
                held.cancel = True
                held.wake.set()
        for task_id in result.lost:
            held = by_id.get(task_id)
            if held is not None and not held.lost:
                held.lost = True  # the job reported (most often), or another attempt owns it
                held.wake.set()

    def _credential_rejected(self, exc: WorkerCredentialRejected) -> None:
        if self.fatal is None:
            self.fatal = exc
            log.error(
                "Slurm executor %s stopping: %s. Enroll it again with "
                "`conveyor worker --join URL --enroll TOKEN`.",
                self.id,
                exc.message,
            )
        self._stopping.set()
        self._done.set()

    # -- one attempt: a Slurm job ----------------------------------------------------------
    def _launch(self, task: Task, lease: Lease, rec: JobRecord | None) -> None:
        if rec is None:
            rec = JobRecord(task=task, lease=lease, name=jobspec.job_name(task.id, lease.attempt))
            self.records.put(rec)  # before sbatch: a crash after it still finds the lease
        a = Attempt(task=task, lease=lease, rec=rec)
        with self._lock:
            self._attempts[task.id] = a
        t = threading.Thread(target=self._run, args=(a,), name=f"slurm-{task.id}", daemon=True)
        self._jobs = [j for j in self._jobs if j.is_alive()] + [t]
        t.start()

    def _run(self, a: Attempt) -> None:
        task, lease, rec = a.task, a.lease, a.rec
        current_task.set(task.id)
        current_attempt.set(lease.attempt)
        current_worker.set(self.id)
        try:
            if rec.job_id is None:
                found = self._find_job(task.id, lease.attempt)
                if found is not None:
                    rec.job_id = found.job_id
                    self.records.put(rec)
                else:
                    self._submit(a)
            self._watch(a)
        except LeaseLost:
            self._log(a, f"Task {task.id}: its lease was lost before the Slurm job was submitted")
            self.records.drop(task.id, lease.attempt)
        except WorkerCredentialRejected as exc:
            self._credential_rejected(exc)
        except SlurmError as exc:
            self._slurm_refused(a, exc)
        except Exception as exc:
            log.exception("Slurm executor error on task %s", task.id)
            self._fail(a, f"internal error: {exc!r}", retryable=True, code="internal")
            self.records.drop(task.id, lease.attempt)
        finally:
            self._flush_logs(a)
            with self._lock:
                self._attempts.pop(task.id, None)
            self._slot_freed.set()

    def _find_job(self, task_id: str, attempt: int) -> SlurmJob | None:
        for job in list(self.board.jobs.values()):
            if self.board.ours(job) == (task_id, attempt):
                return job
        return None

    def _task_credential(self, a: Attempt, ttl_s: float) -> str | None:
        body = {"lease": a.lease.model_dump(mode="json"), "ttl_s": ttl_s}
        res = self.conn.call("/api/worker/v1/task-credential", body, idempotent=True)
        cred = res.get("credential") if isinstance(res, dict) else None
        return str(cred) if cred else None

    def _submit(self, a: Attempt) -> None:
        task, lease, rec = a.task, a.lease, a.rec
        limit = jobspec.time_limit_min(task, float(self.settings.task_timeout))
        ttl = min(14 * 86400.0, limit * 60.0 + self.cfg.queue_allowance_s)
        spec = jobspec.JobSpec(
            api=self.conn.url,
            credential=self._task_credential(a, ttl),
            lease=lease,
            time_limit_min=limit,
            ca_cert=os.environ.get("CONVEYOR_CA_CERT") or None,
        )
        req = jobspec.build_request(
            task,
            lease,
            self.cfg,
            worker_id=self.id,
            spec=spec,
            settings_env=jobspec.settings_environment(self.settings),
            secrets=self.secrets_of(task),
        )
        self._log(a, f"Submitting Slurm job {req.name}: {jobspec.describe(req)}")
        rec.job_id = self.slurm.submit(req)
        self.records.put(rec)
        # shipped with the next heartbeat, with what Slurm says of the job by then
        self._log(a, f"Slurm job {rec.job_id} submitted for attempt {lease.attempt}")

    def _watch(self, a: Attempt) -> None:
        rec = a.rec
        assert rec.job_id is not None
        job_id = rec.job_id
        generation = -1
        noted: str | None = None
        noted_at = float("-inf")
        running_said = False
        lost_at: float | None = None
        while True:
            job, generation = self.board.wait(job_id, generation, self.cfg.poll_s * 2 + 1, a.wake)
            a.wake.clear()
            if self._stopping.is_set():
                self._log(a, f"Executor stopping: Slurm job {job_id} keeps running (adopted later)")
                return
            if a.cancel and not rec.cancel_sent:
                self._log(
                    a,
                    f"Cancel requested: scancel Slurm job {job_id}; the task is cancelled once "
                    "Slurm says the job ended",
                )
                self._scancel(job_id)
                rec.cancel_sent = True
                self.records.put(rec)
            if job is None and self.board.error is None:
                job = self.slurm.job(job_id)  # not in squeue (yet, or any more): ask scontrol
                if job is None:
                    self._job_ended(a, None)
                    return
            if a.lost:
                if job is None or job.terminal:
                    self.records.drop(a.task.id, a.lease.attempt)
                    return
                lost_at = lost_at or time.monotonic()
                if time.monotonic() - lost_at >= LOST_GRACE_S:
                    self._log(
                        a,
                        f"Lease on task {a.task.id} lost (another attempt owns it, or it ended): "
                        f"scancel Slurm job {job_id}",
                    )
                    self._scancel(job_id)
                    self.records.drop(a.task.id, a.lease.attempt)
                    return
                continue
            if job is None:
                continue  # Slurm cannot be read now: keep the lease, look again
            if job.terminal:
                self._job_ended(a, job)
                return
            if job.state == "PENDING":
                # Slurm's reason once it gave one (a job it has not looked at yet has
                # none), noted at most every NOTE_EVERY_S: a job climbing a long queue goes
                # Priority -> Resources in seconds, and each note is a progress write and
                # a log line; the reason it keeps is noted
                why = job.reason if job.reason not in ("", "None", "(null)") else None
                note = f"Slurm job {job_id} pending: {why}"
                if why and note != noted and time.monotonic() - noted_at >= NOTE_EVERY_S:
                    noted, noted_at = note, time.monotonic()
                    self._log(a, note)
                    self._progress(a, SCHEDULER_PHASE, note)
            elif job.state in ("RUNNING", "COMPLETING") and not running_said:
                running_said = True
                self._log(a, f"Slurm job {job_id} running on {job.nodes or '?'}")

    def _job_ended(self, a: Attempt, job: SlurmJob | None) -> None:
        """The job ended.  If it reported its attempt, nothing is left to do; if not (its
        lease is still this executor's), record what Slurm says happened."""
        task, lease, rec = a.task, a.lease, a.rec
        result = self.queue.heartbeat(self.info(), [lease], self.lease_s)
        if task.id not in result.renewed:
            self.records.drop(task.id, lease.attempt)
            return
        if job is not None and job.exit_code is None and job.signal is None:
            job = self.slurm.job(job.job_id) or job  # squeue's lines carry no exit code
        if a.cancel or rec.cancel_sent or task.id in result.cancel:
            out = states.Outcome("cancelled", False, "cancelled by request", cancelled=True)
        elif job is None:
            out = states.outcome(rec.job_id or "?", "GONE")
        else:
            out = states.outcome(
                job.job_id,
                job.state,
                reason=job.reason,
                exit_code=job.exit_code,
                signal=job.signal,
                time_limit_min=job.time_limit_min,
            )
        if out.cancelled:
            self._log(a, f"Task cancelled: {task.id} (Slurm job {rec.job_id} ended)")
        else:
            self._log(a, f"Task failed: {task.id}: {out.message}")
        for line in self._output_tail(task.id, lease.attempt):
            self._log(a, line, "slurm")
        self._fail(a, out.message, retryable=out.retryable, code=out.code)
        self.records.drop(task.id, lease.attempt)

    def _output_tail(self, task_id: str, attempt: int) -> list[str]:
        """The end of the job's output file when this host can read it (the same host, a
        shared filesystem): what a job that died before it could speak printed."""
        path = Path(self.cfg.output_dir) / f"conveyor-{task_id}-{attempt}.out"
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                lines = deque(fh, maxlen=OUTPUT_TAIL)
        except OSError:
            return []
        return [f"[job output] {line.rstrip()}" for line in lines if line.strip()]

    def _slurm_refused(self, a: Attempt, exc: SlurmError) -> None:
        """sbatch refused the job (a request no node can meet, an unknown account): no
        retry helps.  Slurm unreachable: handed back without counting the attempt."""
        if any(w in exc.message for w in _REFUSALS):
            self._log(a, f"Task failed: {a.task.id}: Slurm refused the job: {exc.message}")
            self._fail(
                a, f"Slurm refused the job: {exc.message}", retryable=False, code="slurm_refused"
            )
        else:
            detail = f"{INFRA_PREFIX}{exc.message}"
            self._log(a, f"Task released: {a.task.id}: {detail}; back in the queue")
            self._flush_logs(a)
            self._report(lambda: self.queue.release(a.lease, delay_s=OUTAGE_DELAY_S, error=detail))
        self.records.drop(a.task.id, a.lease.attempt)

    def _scancel(self, job_id: str) -> None:
        try:
            self.slurm.cancel(job_id)
        except Exception as exc:
            log.warning("scancel %s failed: %s", job_id, exc)

    # -- reporting -------------------------------------------------------------------------
    def _log(self, a: Attempt, line: str, stream: str = "worker") -> None:
        log.info("%s", line)
        with a.lock:
            a.logs.append((utcnow(), stream, line))

    def _flush_logs(self, a: Attempt) -> None:
        with a.lock:
            batch, a.logs = a.logs, []
        if not batch:
            return
        try:
            self.queue.append_logs(a.task.id, a.lease.attempt, batch)
        except Exception as exc:
            unsent = batch[getattr(exc, "sent", 0) :]
            log.warning("could not ship %d log lines of task %s: %s", len(unsent), a.task.id, exc)
            with a.lock:
                a.logs[:0] = unsent

    def _progress(self, a: Attempt, phase: str, message: str) -> None:
        try:
            self.queue.progress(a.lease, Progress(percent=0.0, phase=phase, message=message))
        except LeaseLost:
            a.lost = True
        except Exception as exc:  # best effort, as any worker's progress
            log.warning("progress of task %s not recorded: %s", a.task.id, exc)

    def _fail(self, a: Attempt, message: str, *, retryable: bool, code: str) -> None:
        self._flush_logs(a)  # the log is whole once the outcome shows
        self._report(lambda: self.queue.fail(a.lease, message, retryable=retryable, code=code))

    def _report(self, call: Callable[[], Task]) -> Task | None:
        try:
            return outputs.retry_infrastructure(
                call, budget_s=max(30.0, self.lease_s), what="recording the outcome"
            )
        except LeaseLost:
            log.warning("lease lost before the outcome could be recorded")
        except (WorkerCredentialRejected, RemoteUnavailable) as exc:
            log.warning("the outcome could not be recorded: %s", exc.message)
        except Exception:
            log.exception("the outcome could not be recorded; the lease will expire")
        return None
