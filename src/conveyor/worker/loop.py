"""The worker: claims tasks, runs their processors, heartbeats, reports.

Its per-task cost is kept a small fraction of the backend's:

* a bounded pool of long-lived executor threads (``concurrency`` of them) runs
  processors; claimed tasks wait for one in a local queue;
* claims take up to the free capacity in one call, plus a prefetch (the next
  tasks, claimed while the current ones run) while recent tasks are short, deeper
  the shorter they are, so a prefetched task never waits long for a slot; every
  held lease, prefetched ones included, is renewed by the heartbeat;
* one thread times every task out (a heap of deadlines), not a timer per task;
* a task's work folder is made only if its processor asks for ``ctx.workdir``;
* a task's log lines are buffered and shipped with the heartbeat, and its last
  ones ("Task completed" included) with its completion: ``complete_many``
  completes every task that finished meanwhile in one backend call (one
  transaction on the SQL engines), each fenced by its own lease, the log lines
  in the same transaction.

A separate heartbeat thread renews every lease in one backend call, flushes task
logs and learns about cancels, so a processor that blocks for minutes never lets
its lease lapse.

A worker talks to a ``WorkerQueue`` only.  Publishing its outputs and the staging
sweep also need two store calls (``outputs.SweepBackend``: look a task up, record
what was published): a worker beside a local engine is given them; a remote
worker has none, and its API publishes and sweeps instead.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from conveyor import __version__, outputs
from conveyor.backends import WorkerQueue
from conveyor.backends.base import Completion
from conveyor.config import Settings
from conveyor.errors import (
    LeaseLost,
    NotFound,
    ProcessorError,
    RemoteUnavailable,
    ServiceUnavailable,
    TaskCancelled,
    WorkerCredentialRejected,
)
from conveyor.infra_errors import is_infrastructure_error
from conveyor.logs import current_attempt, current_task, current_worker
from conveyor.models import (
    ClaimedTask,
    Lease,
    OutputFile,
    Progress,
    Task,
    TaskStatus,
    WorkerInfo,
    utcnow,
)
from conveyor.processors import ChildrenSpawned, ProcessorContext, ProcessorRegistry
from conveyor.storage import BlobStore
from conveyor.worker.until_signalled import run_until_signalled

from .workdirs import WorkRoot

log = logging.getLogger("conveyor.worker")

# An attempt stopped by a database or storage outage is handed back without
# counting against max_attempts, at most this many times per task (then it counts).
MAX_INFRA_RELEASES = 5
# ...back in the queue after this delay, doubled for each earlier such release (to 300 s)
INFRA_RELEASE_DELAY_S = 10.0
INFRA_PREFIX = "infrastructure unavailable: "
# no timeout may overflow a timer: 30 days is longer than any task should run
MAX_TIMEOUT_S = 30 * 86400.0
# prefetch only while recent tasks ran shorter than this on average (a prefetched
# task waits for a slot about that long), and complete at most this many at once
PREFETCH_MAX_RUN_S = 1.0
# by default the prefetch deepens for shorter tasks, up to PREFETCH_MAX, so that the
# tasks held wait about PREFETCH_WAIT_S for a slot: tasks of a millisecond are then
# claimed (and completed) a hundred to a transaction instead of ten
PREFETCH_WAIT_S = 0.05
PREFETCH_MAX = 128
MAX_COMPLETION_BATCH = 256


def infra_failure(exc: BaseException) -> bool:
    """An outage stopped the attempt (not the task's own fault): a database or store
    error, also when a processor wrapped it as a retryable failure."""
    if is_infrastructure_error(exc):
        return True
    if isinstance(exc, ProcessorError) and exc.retryable:
        cause = exc.__cause__ or exc.__context__
        return cause is not None and is_infrastructure_error(cause)
    return False


def infra_releases(task: Task) -> int:
    """Attempts of ``task`` handed back because of an outage so far."""
    return sum(
        1
        for a in task.history
        if a.outcome == "released" and (a.error or "").startswith(INFRA_PREFIX)
    )


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass
class RunningTask:
    task: Task
    lease: Lease
    cancel_event: threading.Event = field(default_factory=threading.Event)
    stop_reason: str | None = None  # cancel | timeout | shutdown | lost
    logs: list[tuple[datetime, str, str]] = field(default_factory=list)
    logs_lock: threading.Lock = field(default_factory=threading.Lock)
    # held while lines taken from ``logs`` are on their way: a task's lines reach the
    # backend in the order they were written, whichever thread ships them
    ship_lock: threading.Lock = field(default_factory=threading.Lock)
    last_progress: float = 0.0
    last_phase: str = ""
    started: bool = False  # an executor thread has it (False: prefetched, waiting)
    # its completion is on its way: a heartbeat that finds the lease gone meanwhile says
    # nothing (the completion answers whether it counted)
    completing: bool = False
    # its completion was handed to the completer, which finishes it (see Worker._hand_off)
    handed_off: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    # time.monotonic() until which the lease is surely held (renewed before then)
    held_until: float = 0.0
    stager: outputs.Stager | None = None

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.cancel_event.set()

    def take_logs(self) -> list[tuple[datetime, str, str]]:
        with self.logs_lock:
            batch, self.logs = self.logs, []
        return batch

    def put_back(self, lines: list[tuple[datetime, str, str]]) -> None:
        with self.logs_lock:
            self.logs[:0] = lines


class Timeouts:
    """Every task's timeout on one thread: a heap of deadlines.

    A cancelled entry stays in the heap until it comes up or the heap is rebuilt
    (when cancelled entries outnumber live ones), so a fast stream of tasks with
    hours-long timeouts keeps the heap as small as the tasks running."""

    def __init__(self) -> None:
        self._heap: list[list[object]] = []  # [deadline, seq, callback or None]
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._cancelled = 0
        self._stopped = False
        self._thread: threading.Thread | None = None

    def add(self, delay_s: float, callback: Callable[[], None]) -> list[object]:
        entry: list[object] = [time.monotonic() + delay_s, next(self._seq), callback]
        with self._cond:
            heapq.heappush(self._heap, entry)
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(
                    target=self._run, name="conveyor-timeouts", daemon=True
                )
                self._thread.start()
            if self._heap[0] is entry:
                self._cond.notify()
        return entry

    def cancel(self, entry: list[object]) -> None:
        with self._cond:
            if entry[2] is None:
                return
            entry[2] = None
            self._cancelled += 1
            if self._cancelled > 64 and self._cancelled * 2 > len(self._heap):
                self._heap = [e for e in self._heap if e[2] is not None]
                heapq.heapify(self._heap)
                self._cancelled = 0

    def _run(self) -> None:
        while True:
            due: list[Callable[[], None]] = []
            with self._cond:
                while not self._stopped:
                    now = time.monotonic()
                    while self._heap and float(self._heap[0][0]) <= now:  # type: ignore[arg-type]
                        entry = heapq.heappop(self._heap)
                        if entry[2] is None:
                            self._cancelled -= 1
                        else:
                            due.append(entry[2])  # type: ignore[arg-type]
                    if due:
                        break
                    wait = float(self._heap[0][0]) - now if self._heap else None  # type: ignore[arg-type]
                    self._cond.wait(wait)
                if self._stopped:
                    return
            for callback in due:
                try:
                    callback()
                except Exception:
                    log.exception("a task timeout failed")

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)


@dataclass
class _Waiting:
    item: Completion
    # a caller that waits (``Completer.complete``); a hand-off is told by ``then``
    done: threading.Event | None = None
    result: BaseException | None = None
    error: BaseException | None = None  # the whole call failed
    # called on the completer's thread with (result, error) instead of a waiting caller
    then: Callable[[BaseException | None, BaseException | None], None] | None = None


class Completer:
    """Completions batched: the tasks that finished while the previous call was on its
    way are completed together in one ``complete_many`` call, each under its own lease.
    The caller blocks until its task's completion is recorded (or refused).  An outage
    is retried in place, the whole batch at once: a repeated completion is answered like
    the first and appends no log line twice."""

    def __init__(self, queue: WorkerQueue, budget_s: float) -> None:
        self.queue = queue
        self.budget_s = budget_s
        self._pending: list[_Waiting] = []
        self._cond = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def complete(self, item: Completion) -> BaseException | None:
        """None when completed; the item's refusal (``LeaseLost``); raises what failed the
        whole call."""
        done = threading.Event()
        waiting = _Waiting(item, done=done)
        if not self._queue(waiting):  # a task that outlived the worker's stop: on its own
            return self._call([item])[0]
        done.wait()
        if waiting.error is not None:
            raise waiting.error
        return waiting.result

    def submit(
        self,
        item: Completion,
        then: Callable[[BaseException | None, BaseException | None], None],
    ) -> None:
        """Complete ``item`` without waiting: ``then(result, error)`` is called on the
        completer's thread once the call is answered (``result`` as ``complete`` returns
        it, ``error`` what failed the whole call).  Blocks only while a backlog of
        completions waits (the engine is slower than the tasks)."""
        waiting = _Waiting(item, then=then)
        if not self._queue(waiting, backlog=4 * MAX_COMPLETION_BATCH):
            try:
                result, error = self._call([item])[0], None
            except Exception as exc:
                result, error = None, exc
            then(result, error)

    def _queue(self, waiting: _Waiting, backlog: int | None = None) -> bool:
        with self._cond:
            if self._stopped:
                return False
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="conveyor-complete", daemon=True
                )
                self._thread.start()
            while backlog is not None and len(self._pending) >= backlog and not self._stopped:
                self._cond.wait()
            self._pending.append(waiting)
            self._cond.notify_all()
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopped:
                    self._cond.wait()
                if not self._pending:
                    return
                batch = self._pending[:MAX_COMPLETION_BATCH]
                del self._pending[:MAX_COMPLETION_BATCH]
                self._cond.notify_all()  # room in the backlog
            try:
                results = self._call([w.item for w in batch])
            except BaseException as exc:
                for w in batch:
                    w.error = exc
            else:
                for w, r in zip(batch, results, strict=True):
                    w.result = r
            for w in batch:
                if w.then is not None:
                    try:
                        w.then(w.result, w.error)
                    except Exception:
                        log.exception("finishing a completed task failed")
                if w.done is not None:
                    w.done.set()

    def _call(self, items: list[Completion]) -> list[BaseException | None]:
        return outputs.retry_infrastructure(
            lambda: self.queue.complete_many(items), budget_s=self.budget_s, what="completing"
        )

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)


class Worker:
    def __init__(
        self,
        settings: Settings,
        queue: WorkerQueue,
        storage: BlobStore,
        registry: ProcessorRegistry,
        *,
        store: outputs.SweepBackend | None = None,
        worker_id: str | None = None,
        concurrency: int | None = None,
        kinds: list[str] | None = None,
        prefetch: int | None = None,
    ) -> None:
        """``store``: where published outputs are recorded and where the sweep looks
        tasks up: the local engine (``server.runtime.local_worker`` passes it); None for
        a remote worker, whose API does both.  ``prefetch``: tasks claimed beyond the
        free slots while recent tasks are short (default: the settings', else as many
        as ``concurrency``, deeper for tasks far shorter than a second; 0: none)."""
        self.settings = settings
        self.queue = queue
        self.store = store
        self.storage = storage
        self.registry = registry
        self.id = worker_id or default_worker_id()
        self.concurrency = concurrency or settings.max_concurrent_tasks
        if prefetch is None:
            prefetch = getattr(settings, "worker_prefetch", None)
        self.prefetch = self.concurrency if prefetch is None else max(0, prefetch)
        self._deepen_prefetch = prefetch is None  # a prefetch the operator set stays put
        self.lease_s = settings.lease_seconds
        # (bandit B108: a fallback only, Settings always sets temp_dir; each worker gets
        # a folder of its own below this root, and each task one below that)
        self.work_root = WorkRoot(Path(settings.temp_dir or "/tmp") / "conveyor-work")  # nosec B108
        self.capabilities: dict[str, object] = {}
        self.kinds = kinds or self._probe_kinds()
        # the GPUs this worker hands out (container: CONVEYOR_GPUS or nvidia-smi)
        self.gpus = max(
            (len(proc.gpu_devices()) for kind, proc in registry.items() if kind in self.kinds),
            default=0,
        )
        self._running: dict[str, RunningTask] = {}  # claimed: running or waiting for a thread
        self._ready: deque[RunningTask] = deque()  # claimed, waiting for an executor thread
        self._ready_cond = threading.Condition()
        self._executors: list[threading.Thread] = []
        self._timeouts = Timeouts()
        self._completer = Completer(queue, max(30.0, self.lease_s))
        self._run_avg: float | None = None  # recent run time of a task (moving average)
        self._completing = 0  # tasks handed to the completer, not answered yet
        self._lock = threading.Lock()
        self._stopping = threading.Event()  # stop claiming
        self._stopped = threading.Event()  # heartbeat may end
        self._slot_freed = threading.Event()
        self._done = threading.Event()  # run_forever returns
        # set when the API refused this worker's credential: it must stop, not retry
        self.fatal: WorkerCredentialRejected | None = None
        self._threads: list[threading.Thread] = []
        self._last_reap = 0.0
        self._last_sweep = 0.0
        self.started_at = utcnow()

    # -- set-up --------------------------------------------------------------
    def _probe_kinds(self) -> list[str]:
        kinds = []
        for kind, proc in self.registry.items():
            try:
                caps = proc.probe()
            except Exception:
                log.exception("probe of %s failed; not taking %s tasks", kind, kind)
                caps = None
            if caps is None:
                why = str(getattr(proc, "unavailable_reason", "") or "")
                log.warning(
                    "this host cannot run %s tasks; not claiming them%s",
                    kind,
                    f": {why}" if why else "",
                )
                unavailable = self.capabilities.setdefault("unavailable", {})
                assert isinstance(unavailable, dict)
                unavailable[kind] = why or f"this worker cannot run {kind} tasks"
                continue
            self.capabilities[kind] = caps
            kinds.append(kind)
        return kinds

    def gpus_in_use(self) -> int:
        """GPUs the tasks this worker holds asked for, whether they have them yet or not."""
        with self._lock:
            return sum(rt.task.gpus for rt in self._running.values())

    def info(self) -> WorkerInfo:
        with self._lock:
            running = list(self._running)
        return WorkerInfo(
            id=self.id,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            kinds=self.kinds,
            concurrency=self.concurrency,
            running=running,
            capabilities=self.capabilities,
            started_at=self.started_at,
            version=__version__,
            gpus=self.gpus,
            gpus_in_use=self.gpus_in_use(),
        )

    # -- lifecycle ---------------------------------------------------------------
    @property
    def temp_root(self) -> Path:
        return self.work_root.path

    def start(self) -> None:
        removed = self.work_root.open()
        if removed:
            log.warning("Removed %d work folder(s) left by workers that died", removed)
        log.info(
            "Worker %s started: kinds=%s concurrency=%d",
            self.id,
            ",".join(self.kinds),
            self.concurrency,
        )
        for i in range(self.concurrency):
            t = threading.Thread(target=self._executor, name=f"conveyor-task-{i}", daemon=True)
            t.start()
            self._executors.append(t)
        for target, name in ((self._claim_loop, "claim"), (self._heartbeat_loop, "heartbeat")):
            t = threading.Thread(target=target, name=f"conveyor-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, *, grace: float | None = None) -> None:
        """Stop claiming; hand back at once what waits for a slot; let running tasks
        finish for ``grace`` s, then hand them back."""
        grace = self.settings.shutdown_grace if grace is None else grace
        if not self._stopping.is_set():
            log.info("Worker %s stopping: no new claims, %d running", self.id, len(self._running))
        self._stopping.set()
        if self._threads and self._threads[0] is not threading.current_thread():
            # a claim in flight returns before we look at what runs (or is released)
            self._threads[0].join(timeout=30)
        with self._ready_cond:
            waiting = list(self._ready)
            self._ready.clear()
        for rt in waiting:
            self._release_unstarted(rt)
        deadline = time.monotonic() + grace
        while self._running and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._lock:
            leftover = list(self._running.values())
        for rt in leftover:
            log.info("Releasing task %s for another worker", rt.task.id)
            rt.stop("shutdown")
        for rt in leftover:
            rt.done.wait(timeout=15)
        with self._ready_cond:
            self._ready_cond.notify_all()  # the executors see _stopping and end
        for t in self._executors:
            t.join(timeout=5)
        self._completer.stop()
        self._stopped.set()
        for t in self._threads:
            t.join(timeout=5)
        self._timeouts.stop()
        self.work_root.close()

    def _release_unstarted(self, rt: RunningTask) -> None:
        """A prefetched task no thread took: back to the queue, the attempt not counted."""
        log.info("Releasing task %s: the worker is stopping", rt.task.id)
        self._task_log(rt, f"Task released: {rt.task.id}: worker shutting down")
        self._flush_logs(rt)
        self._report(lambda: self.queue.release(rt.lease))
        with self._lock:
            self._running.pop(rt.task.id, None)
        rt.done.set()

    def run_forever(self) -> None:
        """Blocking entry point for ``conveyor worker``; SIGTERM/SIGINT stop gracefully."""
        run_until_signalled(self.start, self.stop, self._done)

    # -- loops -----------------------------------------------------------------------
    def _claim_loop(self) -> None:
        current_worker.set(self.id)
        while not self._stopping.is_set():
            try:
                self._maybe_reap()
                free = self._free_slots()
                if free <= 0:
                    self._slot_freed.wait(self.settings.poll_interval)
                    self._slot_freed.clear()
                    continue
                claimed = self._claim(free)
                if self._stopping.is_set():  # stop() came while we were claiming
                    for c in claimed:
                        log.info("Releasing task %s: the worker is stopping", c.task.id)
                        self.queue.release(c.lease)
                    break
                for c in claimed:
                    self._enqueue(c.task, c.lease)
                if not claimed:
                    self.queue.wait_for_work(self.settings.poll_interval)
            except WorkerCredentialRejected as exc:
                self._credential_rejected(exc)
                break
            except Exception:
                log.exception("claim loop error; retrying")
                self._stopping.wait(min(5.0, self.settings.poll_interval))

    def _free_slots(self) -> int:
        """How many tasks to claim now: every free slot when a thread has nothing to run;
        with prefetch, otherwise only once half the capacity is free, so that one claim
        (one transaction) serves several tasks."""
        capacity = self.concurrency + self._prefetch_allowance()
        with self._lock:  # a task whose completion is on its way holds no slot
            held = len(self._running) - self._completing
        with self._ready_cond:
            waiting = len(self._ready)
        free = capacity - held
        if free <= 0:
            return 0
        if waiting == 0 and held - waiting < self.concurrency:
            return free  # an executor thread is idle
        return free if free >= max(1, capacity // 2) else 0

    def _prefetch_allowance(self) -> int:
        """Tasks to hold beyond the free slots: ``prefetch`` while recent tasks are short
        (a prefetched task then waits well under a second), none otherwise; by default
        more for far shorter tasks, as many as the executors finish in PREFETCH_WAIT_S."""
        avg = self._run_avg
        if self.prefetch <= 0 or avg is None or avg >= PREFETCH_MAX_RUN_S:
            return 0
        if not self._deepen_prefetch:
            return self.prefetch
        deeper = self.concurrency * PREFETCH_WAIT_S / max(avg, 1e-6)
        return max(self.prefetch, min(PREFETCH_MAX, int(deeper)))

    def _claim(self, slots: int) -> list[ClaimedTask]:
        """Claim only tasks whose GPU request this worker can meet now.

        Without GPUs: one claim for tasks needing none.  With GPUs: one task
        per claim, each asking for at most the GPUs still free, so tasks
        claimed together never need more than the worker has; a task needing
        more stays pending for a worker that has them (its ``waiting_reason``
        says so).
        """
        if self.gpus == 0:
            return self.queue.claim(self.id, self.kinds, slots, self.lease_s, max_gpus=0)
        claimed: list[ClaimedTask] = []
        free = self.gpus - self.gpus_in_use()
        while len(claimed) < slots and not self._stopping.is_set():
            try:
                got = self.queue.claim(self.id, self.kinds, 1, self.lease_s, max_gpus=max(0, free))
            except Exception:
                if not claimed:
                    raise
                # the tasks already leased run now rather than wait out their lease
                log.exception("claim failed; starting the %d task(s) claimed so far", len(claimed))
                break
            if not got:
                break
            claimed.extend(got)
            free -= sum(c.task.gpus for c in got)
        return claimed

    def _maybe_reap(self) -> None:
        now = time.monotonic()
        if now - self._last_reap >= self.settings.reap_interval:
            self._last_reap = now
            n = self.queue.reap()
            if n:
                log.warning("Reaped %d task(s) whose worker stopped heartbeating", n)
        sweep_every = max(60.0, self.settings.reap_interval)
        store = self.store
        if store is not None and self.storage.can_promote and now - self._last_sweep >= sweep_every:
            self._last_sweep = now
            try:
                outputs.sweep(store, self.storage, self.settings.output_bucket)
            except Exception:
                log.warning("staging sweep failed; will retry", exc_info=True)

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
        try:  # a last flush of logs written during shutdown
            self.heartbeat_once()
        except Exception:
            log.debug("final heartbeat failed", exc_info=True)

    def _credential_rejected(self, exc: WorkerCredentialRejected) -> None:
        """A revoked or expired credential: retrying cannot help, so the worker stops."""
        if self.fatal is None:
            self.fatal = exc
            log.error(
                "Worker %s stopping: %s. Enroll it again with "
                "`conveyor worker --join URL --enroll TOKEN`.",
                self.id,
                exc.message,
            )
        self._stopping.set()
        self._done.set()

    def heartbeat_once(self) -> None:
        with self._lock:
            running = list(self._running.values())
        for rt in running:
            self._flush_logs(rt)
        sent = time.monotonic()
        result = self.queue.heartbeat(self.info(), [rt.lease for rt in running], self.lease_s)
        by_id = {rt.task.id: rt for rt in running}
        for task_id in result.renewed:
            if task_id in by_id:
                by_id[task_id].held_until = sent + self.lease_s
        for task_id in result.cancel:
            if task_id in by_id:
                log.info("Cancel requested for task %s: stopping it", task_id)
                by_id[task_id].stop("cancel")
        for task_id in result.lost:
            gone = by_id.get(task_id)
            if gone is not None and gone.stop_reason is None and not gone.completing:
                log.warning("Lease on task %s lost: abandoning it", task_id)
                gone.stop("lost")

    # -- running one task --------------------------------------------------------------
    def _check_lease(self, rt: RunningTask) -> None:
        """Raise ``LeaseLost`` unless this attempt still holds its lease: known lost, or not
        renewed for a whole lease (the process was frozen, or the backend unreachable)
        and not renewable now.  Called before every side effect a processor publishes."""
        if rt.stop_reason == "lost":
            raise LeaseLost(f"lease on task {rt.task.id} is no longer held by this worker")
        if time.monotonic() < rt.held_until - min(2.0, self.lease_s / 4):
            return
        sent = time.monotonic()
        try:
            result = outputs.retry_infrastructure(
                lambda: self.queue.heartbeat(self.info(), [rt.lease], self.lease_s),
                budget_s=max(30.0, self.lease_s),
                what="renewing a lease",
            )
        except Exception as exc:
            if is_infrastructure_error(exc):  # not known lost: an outage, handed back as one
                raise ServiceUnavailable(
                    f"could not confirm the lease on task {rt.task.id}: {exc}"
                ) from exc
            raise
        if rt.task.id not in result.renewed:
            rt.stop("lost")
            raise LeaseLost(f"lease on task {rt.task.id} is no longer held by this worker")
        rt.held_until = sent + self.lease_s

    def _enqueue(self, task: Task, lease: Lease) -> None:
        rt = RunningTask(task=task, lease=lease, held_until=time.monotonic() + self.lease_s)
        with self._lock:
            self._running[task.id] = rt
        with self._ready_cond:
            self._ready.append(rt)
            self._ready_cond.notify()

    def _launch(self, task: Task, lease: Lease) -> None:
        """Run a task on a thread of its own, outside the pool (an executor adopting work
        it held before a restart may hold more than ``concurrency``)."""
        rt = RunningTask(
            task=task, lease=lease, held_until=time.monotonic() + self.lease_s, started=True
        )
        with self._lock:
            self._running[task.id] = rt

        def run() -> None:
            current_worker.set(self.id)
            try:
                self._execute(rt)
            finally:
                if not rt.handed_off:
                    rt.done.set()

        threading.Thread(target=run, name=f"task-{task.id}", daemon=True).start()

    def _executor(self) -> None:
        """One of ``concurrency`` long-lived threads: runs claimed tasks one at a time."""
        current_worker.set(self.id)
        while True:
            with self._ready_cond:
                while not self._ready and not self._stopping.is_set():
                    self._ready_cond.wait()
                if self._stopping.is_set():  # what waits is handed back by stop()
                    return
                rt = self._ready.popleft()
                rt.started = True
            try:
                self._execute(rt)
            except Exception:  # _execute handles its errors; this is a last resort
                log.exception("task %s: the worker failed to run it", rt.task.id)
            finally:
                if not rt.handed_off:
                    rt.done.set()
                current_task.set(None)
                current_attempt.set(None)

    def _task_log(self, rt: RunningTask, line: str, stream: str = "worker") -> None:
        log.info("%s", line)
        with rt.logs_lock:
            rt.logs.append((utcnow(), stream, line))

    def _flush_logs(self, rt: RunningTask) -> None:
        with rt.ship_lock:
            batch = rt.take_logs()
            if batch:
                try:
                    self.queue.append_logs(rt.task.id, rt.lease.attempt, batch)
                except Exception as exc:
                    unsent = batch[getattr(exc, "sent", 0) :]  # LogsPartlyShipped: keep the rest
                    log.exception("could not ship %d log lines; keeping them", len(unsent))
                    rt.put_back(unsent)

    def _report_progress(self, rt: RunningTask, percent: float, phase: str, message: str) -> None:
        now = time.monotonic()
        if now - rt.last_progress < 1.0 and percent < 100 and phase == rt.last_phase:
            return  # at most one write a second, but never swallow a phase change
        rt.last_progress, rt.last_phase = now, phase
        try:
            self.queue.progress(
                rt.lease,
                Progress(
                    percent=round(min(100.0, max(0.0, percent)), 1), phase=phase, message=message
                ),
            )
        except LeaseLost:
            rt.stop("lost")
        except Exception as exc:  # progress is best effort: an outage must not fail the task
            if not is_infrastructure_error(exc):
                raise
            log.warning("progress of task %s not recorded: %s", rt.task.id, exc)

    def _execute(self, rt: RunningTask) -> None:
        task, lease = rt.task, rt.lease
        current_task.set(task.id)
        current_attempt.set(lease.attempt)
        workdir = self.temp_root / f"{task.id}-{lease.attempt}-{uuid.uuid4().hex[:6]}"
        wanted = float(task.params.get("timeout_s") or self.settings.task_timeout)
        timeout_s = min(max(wanted, 1.0), MAX_TIMEOUT_S)
        timer = self._timeouts.add(timeout_s, lambda: rt.stop("timeout"))
        started = time.monotonic()
        ctx: ProcessorContext | None = None
        rt.stager = outputs.Stager(
            self.storage,
            self.settings.output_bucket,
            outputs.attempt_staging(task.id, lease.attempt),
            lambda: self._check_lease(rt),
        )
        try:
            where = f"{task.input.bucket}/{task.input.key}" if task.input else "-"
            self._task_log(
                rt,
                f"Task received: {task.id} kind={task.kind} input={where} "
                f"attempt={lease.attempt}/{task.max_attempts} worker={self.id}",
            )
            if rt.stop_reason is not None:  # cancelled or lost while it waited for a slot
                raise TaskCancelled(rt.stop_reason)
            processor = self.registry.get(task.kind)
            # the work folder is made when the processor first asks for ctx.workdir
            ctx = ProcessorContext(
                task=task,
                workdir=workdir,
                storage=self.storage,
                output_bucket=self.settings.output_bucket,
                report_progress=lambda p, ph, m: self._report_progress(rt, p, ph, m),
                log=lambda line: self._task_log(rt, line, "processor"),
                cancel_event=rt.cancel_event,
                timeout_s=timeout_s,
                log_stream=lambda line, stream: self._task_log(rt, line, stream),
                worker_id=self.id,
                attempt=lease.attempt,
                check_lease=lambda: self._check_lease(rt),
                outputs=rt.stager,
                spawn_children=lambda children: self._spawn(rt, children),
                read_children=lambda: outputs.retry_infrastructure(
                    lambda: self.queue.spawned(rt.lease),
                    budget_s=max(30.0, self.lease_s),
                    what="reading children",
                ),
            )
            produced = processor.run(ctx)
            if rt.stop_reason is not None:
                raise TaskCancelled(rt.stop_reason)
            self._check_lease(rt)  # a frozen worker learns here that another attempt took over
            gone = rt.stager.missing(produced)
            if gone:  # never complete naming outputs that cannot be published
                raise ProcessorError(
                    f"staged output(s) missing before completion: {', '.join(gone[:5])}",
                    retryable=True,
                    code="outputs_lost",
                )
            if self._nothing_to_settle(rt, produced):
                self._hand_off(rt, produced)
                return
            try:
                self._complete(rt, produced)
            except Exception as exc:
                if isinstance(exc, LeaseLost) or not infra_failure(exc):
                    raise
                # the completion may have landed before the connection dropped: what was
                # staged stays (the sweep publishes it, or removes it once another attempt
                # finished the task), and the lease decides
                self._task_log(
                    rt,
                    f"Task {task.id}: the completion could not be confirmed ({exc}); "
                    "its lease will tell whether it counts",
                )
                return
            self._settle_completed(rt, produced)
        except ChildrenSpawned:  # handed back by _spawn: neither completed nor failed
            pass
        except TaskCancelled:
            self._finish_stopped(rt, timeout_s)
        except LeaseLost:
            self._abandon(rt)
        except ProcessorError as exc:
            if rt.stop_reason is not None:
                self._finish_stopped(rt, timeout_s)
            elif infra_failure(exc):
                self._release_for_outage(rt, exc)
            else:
                self._fail(rt, exc.message, retryable=exc.retryable, code=exc.code)
        except NotFound as exc:  # e.g. the input was deleted after submit: retrying won't help
            self._fail(rt, exc.message, retryable=False, code=exc.code)
        except Exception as exc:
            if rt.stop_reason == "lost":
                self._abandon(rt)
            elif infra_failure(exc):
                self._release_for_outage(rt, exc)
            else:
                log.exception("unexpected error in task %s", task.id)
                self._fail(rt, f"internal error: {exc!r}", retryable=True, code="internal")
        finally:
            self._timeouts.cancel(timer)
            if ctx is None or ctx.workdir_made:
                shutil.rmtree(workdir, ignore_errors=True)
            ran = time.monotonic() - started
            if rt.stop_reason != "spawned":  # a run that split says nothing of task length
                self._run_avg = ran if self._run_avg is None else 0.8 * self._run_avg + 0.2 * ran
            if not rt.handed_off:
                self._flush_logs(rt)
                self._finished(rt)
            else:
                self._slot_freed.set()  # this thread is free; the lease is held till answered

    def _finished(self, rt: RunningTask) -> None:
        """The task leaves the worker: its lease is no longer renewed."""
        with self._lock:
            self._running.pop(rt.task.id, None)
            if rt.handed_off:
                self._completing -= 1
        self._slot_freed.set()

    def _complete(self, rt: RunningTask, produced: list[OutputFile]) -> None:
        """Complete under the attempt's lease, batched with other tasks' completions; the
        task's last log lines, "Task completed" included, go with it (the log is whole
        once the outcome shows).  Raises what refused or failed it, its lines kept."""
        line = f"Task completed: {rt.task.id} with {len(produced)} output(s)"
        with rt.ship_lock:  # lines a heartbeat is shipping reach the backend first
            lines = rt.take_logs()
        item = Completion(rt.lease, produced, [*lines, (utcnow(), "worker", line)])
        rt.completing = True
        try:
            refused = self._completer.complete(item)
        except BaseException:
            rt.put_back(lines)
            raise
        if refused is not None:
            rt.put_back(lines)
            raise refused
        log.info("%s", line)

    @staticmethod
    def _nothing_to_settle(rt: RunningTask, produced: list[OutputFile]) -> bool:
        """A first attempt that staged nothing: no attempt of the task ever wrote under its
        staging prefix, so its completion publishes nothing and needs no storage call."""
        staged = rt.stager is not None and bool(rt.stager.staged)
        return not staged and not any(o.staged_key for o in produced) and len(rt.task.history) <= 1

    def _hand_off(self, rt: RunningTask, produced: list[OutputFile]) -> None:
        """Complete without holding this executor thread: the completer records the
        completion (batched, fenced by the lease, the last log lines with it) and then
        finishes the task; this thread takes the next task meanwhile.  Only for tasks with
        nothing to settle (``_nothing_to_settle``), so nothing but the record is left."""
        line = f"Task completed: {rt.task.id} with {len(produced)} output(s)"
        with rt.ship_lock:
            lines = rt.take_logs()
        item = Completion(rt.lease, produced, [*lines, (utcnow(), "worker", line)])
        rt.completing = rt.handed_off = True
        with self._lock:
            self._completing += 1

        def then(refused: BaseException | None, error: BaseException | None) -> None:
            try:
                if error is not None:
                    rt.put_back(lines)
                    if infra_failure(error):
                        self._task_log(
                            rt,
                            f"Task {rt.task.id}: the completion could not be confirmed "
                            f"({error}); its lease will tell whether it counts",
                        )
                    elif isinstance(error, LeaseLost):
                        self._abandon(rt)
                    else:
                        log.error("completing task %s failed: %r", rt.task.id, error)
                        self._fail(
                            rt, f"internal error: {error!r}", retryable=True, code="internal"
                        )
                elif refused is not None:
                    rt.put_back(lines)
                    self._abandon(rt)
                else:
                    log.info("%s", line)
                self._flush_logs(rt)
            finally:
                self._finished(rt)
                rt.done.set()

        self._completer.submit(item, then)

    def _settle_completed(self, rt: RunningTask, produced: list[OutputFile]) -> None:
        """The completed task's outputs made visible, and its staging removed (nothing to
        do for a task with nothing to settle)."""
        if not self._nothing_to_settle(rt, produced):
            self._settle(
                rt.task.model_copy(
                    update={"status": TaskStatus.COMPLETED, "outputs": list(produced)}
                )
            )

    # -- outcomes ------------------------------------------------------------------------
    def _call(self, call: Callable[[], Task], what: str) -> Task:
        """A backend call retried in place while the database is unreachable; the
        fenced calls are safe to repeat (``complete`` answers its own lease alike)."""
        return outputs.retry_infrastructure(call, budget_s=max(30.0, self.lease_s), what=what)

    def _settle(self, task: Task) -> None:
        """Outputs made visible (completed) or staging removed (failed); a crash or an
        outage here is finished by the staging sweep, never by a stale attempt.  Left to
        the API for a remote worker (it has no task store)."""
        if self.store is None:
            return
        try:
            outputs.settle(self.store, self.storage, self.settings.output_bucket, task)
        except Exception:
            log.warning(
                "Task %s: outputs not settled yet (%s); the staging sweep will finish",
                task.id,
                task.status.value,
                exc_info=True,
            )

    def _fail(
        self, rt: RunningTask, message: str, *, retryable: bool, code: str, say: bool = True
    ) -> None:
        if say:
            self._task_log(rt, f"Task failed: {rt.task.id}: {message}")
        self._flush_logs(rt)  # the log is whole once the outcome shows
        # what this attempt staged stays: the next attempt may restore from it (a container
        # job's checkpoints); once the task ends, settle removes the task's whole staging
        done = self._report(
            lambda: self.queue.fail(rt.lease, message, retryable=retryable, code=code)
        )
        if done is not None:
            self._settle(done)

    def _abandon(self, rt: RunningTask) -> None:
        """The lease is gone: another attempt owns the task.  Nothing this attempt staged
        may be used; it removes its own staging, and only that."""
        rt.stop("lost")
        self._task_log(rt, f"Task abandoned: {rt.task.id}: lease lost; result discarded")
        if rt.stager is not None:
            rt.stager.discard()

    def _release_for_outage(self, rt: RunningTask, exc: BaseException) -> None:
        """Hand the task back without counting the attempt: the database or the store
        was down, which says nothing about the task.  Bounded: after
        ``MAX_INFRA_RELEASES`` such releases the attempt counts as a failure."""
        detail = f"{INFRA_PREFIX}{exc}"  # the staging stays, as after a failure
        n = infra_releases(rt.task)
        if n >= MAX_INFRA_RELEASES:
            self._fail(rt, detail, retryable=True, code="infrastructure")
            return
        delay = min(300.0, INFRA_RELEASE_DELAY_S * 2**n)
        self._task_log(
            rt,
            f"Task released: {rt.task.id}: {detail}; not counted as an attempt "
            f"({n + 1} of {MAX_INFRA_RELEASES}), back in the queue in {delay:g} s",
        )
        self._flush_logs(rt)
        self._report(lambda: self.queue.release(rt.lease, delay_s=delay, error=detail))

    def _finish_stopped(self, rt: RunningTask, timeout_s: float) -> None:
        lease, reason = rt.lease, rt.stop_reason
        if reason == "timeout":
            self._fail(rt, f"timed out after {timeout_s:g} s", retryable=True, code="timeout")
        elif reason == "shutdown":
            self._task_log(rt, f"Task released: {rt.task.id}: worker shutting down")
            self._flush_logs(rt)  # the log is whole once the outcome shows
            self._report(lambda: self.queue.release(lease))
        elif reason == "lost":
            self._abandon(rt)
        else:
            self._task_log(rt, f"Task cancelled: {rt.task.id}")
            self._fail(rt, "cancelled by request", retryable=False, code="cancelled", say=False)

    # -- children (issue 18) --------------------------------------------------------------
    def _spawn(self, rt: RunningTask, children: list[Task]) -> Task:
        """``ctx.spawn``: the children stored under the attempt's lease and the task handed
        back to wait for them (``WorkerQueue.spawn_children``); the log is shipped first,
        so it is whole once the task shows as waiting.  What the attempt staged stays,
        as after a release."""
        self._task_log(rt, f"Task waiting for children: {rt.task.id} spawns {len(children)}")
        self._flush_logs(rt)
        parent = self._call(
            lambda: self.queue.spawn_children(rt.lease, children), "spawning children"
        )
        rt.stop("spawned")  # the lease is the children's hold now: no heartbeat, no abandon
        return parent

    def _report(self, call: Callable[[], Task]) -> Task | None:
        try:
            return self._call(call, "recording the outcome")
        except LeaseLost:
            log.warning("lease lost before the outcome could be recorded")
        except (WorkerCredentialRejected, RemoteUnavailable) as exc:  # remote workers
            log.warning("the outcome could not be recorded: %s", exc.message)
        except Exception:
            log.exception("the outcome could not be recorded; the lease will expire")
        return None
