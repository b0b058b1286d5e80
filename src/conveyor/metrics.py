"""Prometheus metrics, read from the backend at scrape time.

Every number here comes from the shared engine (SQLite file, PostgreSQL,
DynamoDB), not from counters kept in one process: several API processes
behind a load balancer, and API processes that never ran a task, all report
the same values, and a restart loses nothing.  Counters such as
``conveyor_tasks_total`` are counts of rows in a final state; they only go
down when an operator retries or deletes a task, which Prometheus treats as
a counter reset.

A snapshot is cached for a few seconds (longer when reading it was slow) so
that several scrapers, or a dashboard hammering the endpoint, cost one
aggregate query.
Names follow Prometheus conventions: ``conveyor_`` prefix, base units
(seconds, ratios), ``_total`` on counters, no per-task labels.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from conveyor import __version__
from conveyor.metrics_data import DURATION_BUCKETS, HistogramData, MetricsSnapshot
from conveyor.models import Task, WorkerInfo
from conveyor.service import ConveyorService

log = logging.getLogger(__name__)

QUEUE_STATES = ("pending", "delayed", "processing")
OUTCOMES = ("completed", "failed", "cancelled")
SPEED_SAMPLE = 20  # recent completed tasks averaged into the speed gauges
LOAD_FACTOR = 5.0  # a read that took t seconds is reused for at least 5 t seconds


def _elapsed(task: Task) -> float:
    if task.started_at is None or task.finished_at is None:
        return 0.0
    return max(0.0, (task.finished_at - task.started_at).total_seconds())


def transcode_speed(tasks: Iterable[Task]) -> float | None:
    """Mean encode speed (x realtime) the transcode processor recorded on its outputs."""
    speeds = []
    for t in tasks:
        for o in t.outputs:
            v = o.meta.get("encode_speed")
            if isinstance(v, int | float) and v > 0:
                speeds.append(float(v))
                break
    return sum(speeds) / len(speeds) if speeds else None


def docparse_pages_per_second(tasks: Iterable[Task]) -> float | None:
    """Pages parsed per second of task run time, from the ``pages`` its outputs record."""
    pages, seconds = 0, 0.0
    for t in tasks:
        n = max(
            (o.meta.get("pages", 0) for o in t.outputs if isinstance(o.meta.get("pages"), int)),
            default=0,
        )
        if n and _elapsed(t) > 0:
            pages += n
            seconds += _elapsed(t)
    return pages / seconds if seconds else None


def _histogram(name: str, doc: str, data: dict[str, HistogramData]) -> HistogramMetricFamily:
    fam = HistogramMetricFamily(name, doc, labels=["kind"])
    for kind, h in sorted(data.items()):
        buckets = [
            (repr(float(b)), float(n)) for b, n in zip(DURATION_BUCKETS, h.buckets, strict=True)
        ]
        buckets.append(("+Inf", float(h.count)))
        fam.add_metric([kind], buckets, sum_value=h.sum)
    return fam


class BackendCollector(Collector):
    """Collects queue, task, worker and speed metrics from the service's backend."""

    def __init__(self, service: ConveyorService, cache_s: float = 2.0) -> None:
        self.service = service
        self.cache_s = cache_s
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Metric]] | None = None
        self._ttl = cache_s

    def collect(self) -> Iterator[Metric]:
        """The cached read, if fresh enough: at least ``cache_s`` old, and at least
        ``LOAD_FACTOR`` times as old as it took, so that a slow read on a big table
        costs the database at most a fifth of a core whatever the scrape rate."""
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= self._ttl:
                started = time.monotonic()
                self._cached = (now, self._read())
                self._ttl = max(self.cache_s, LOAD_FACTOR * (time.monotonic() - started))
            metrics = self._cached[1]
        yield from metrics

    def _read(self) -> list[Metric]:
        started = time.perf_counter()
        out: list[Metric] = []
        info = GaugeMetricFamily("conveyor_info", "Conveyor version", labels=["version"])
        info.add_metric([__version__], 1)
        out.append(info)
        up = GaugeMetricFamily(
            "conveyor_backend_up", "1 when the last read of the backend succeeded"
        )
        try:
            backend = self.service.backend
            # fails in seconds when the database is down, where a pooled read would wait
            # for the pool's timeout and the scrape would time out instead of reporting it
            backend.check_ready()
            snap = backend.metrics_snapshot()
            workers = self.service.workers()
            recent: dict[str, list[Task]] = {
                kind: backend.recent_completed(kind, SPEED_SAMPLE)
                for kind in ("transcode", "docparse")
                if kind in self.service.registry.kinds() or kind in snap.tasks
            }
        except Exception as exc:  # a scrape must answer even when the database is down
            log.warning("metrics: backend read failed: %s", exc)
            up.add_metric([], 0)
            out.append(up)
            return out
        up.add_metric([], 1)
        out.append(up)
        out.extend(self._task_metrics(snap))
        out.extend(self._worker_metrics(workers))
        out.extend(self._speed_metrics(recent))
        took = GaugeMetricFamily(
            "conveyor_metrics_read_seconds", "Time the last backend read for /metrics took"
        )
        took.add_metric([], time.perf_counter() - started)
        out.append(took)
        return out

    def _task_metrics(self, snap: MetricsSnapshot) -> list[Metric]:
        kinds = sorted(set(self.service.registry.kinds()) | set(snap.tasks))
        queue = GaugeMetricFamily(
            "conveyor_queue_tasks",
            "Tasks waiting or running, by kind and state (pending, delayed, processing)",
            labels=["kind", "status"],
        )
        finished = CounterMetricFamily(
            "conveyor_tasks",
            "Tasks that finished, by kind and outcome (completed, failed, cancelled)",
            labels=["kind", "outcome"],
        )
        retries = CounterMetricFamily(
            "conveyor_task_retries", "Attempts beyond the first, by kind", labels=["kind"]
        )
        expiries = CounterMetricFamily(
            "conveyor_lease_expiries",
            "Attempts that ended because the worker stopped heartbeating, by kind",
            labels=["kind"],
        )
        for kind in kinds:
            counts = snap.tasks.get(kind, {})
            for st in QUEUE_STATES:
                queue.add_metric([kind, st], counts.get(st, 0))
            for outcome in OUTCOMES:
                finished.add_metric([kind, outcome], counts.get(outcome, 0))
            retries.add_metric([kind], snap.retries.get(kind, 0))
            expiries.add_metric([kind], snap.lease_expiries.get(kind, 0))
        return [
            queue,
            finished,
            retries,
            expiries,
            _histogram(
                "conveyor_task_duration_seconds",
                "Run time of the attempt that completed a task, by kind",
                snap.duration,
            ),
            _histogram(
                "conveyor_task_queue_wait_seconds",
                "Time from submit to the start of a task's latest attempt, by kind",
                snap.queue_wait,
            ),
        ]

    def _worker_metrics(self, workers: list[WorkerInfo]) -> list[Metric]:
        active = GaugeMetricFamily("conveyor_workers", "Workers that heartbeated recently")
        active.add_metric([], len(workers))
        slots = GaugeMetricFamily(
            "conveyor_worker_slots", "Task slots of active workers", labels=["state"]
        )
        busy = sum(min(len(w.running), w.concurrency) for w in workers)
        capacity = sum(w.concurrency for w in workers)
        slots.add_metric(["busy"], busy)
        slots.add_metric(["free"], capacity - busy)
        gpus = GaugeMetricFamily("conveyor_worker_gpus", "GPUs per worker", labels=["worker"])
        gpus_used = GaugeMetricFamily(
            "conveyor_worker_gpus_in_use", "GPUs assigned to running tasks", labels=["worker"]
        )
        for w in workers:
            total, in_use = w.gpu_usage()
            gpus.add_metric([w.id], total)
            gpus_used.add_metric([w.id], in_use)
        return [active, slots, gpus, gpus_used]

    def _speed_metrics(self, recent: dict[str, list[Task]]) -> list[Metric]:
        """Always declared; a sample only once a task of that kind has recorded its speed."""
        speed = GaugeMetricFamily(
            "conveyor_transcode_speed_ratio",
            f"Mean ffmpeg encode speed (x realtime) of the last {SPEED_SAMPLE} transcodes",
        )
        value = transcode_speed(recent.get("transcode", []))
        if value is not None:
            speed.add_metric([], value)
        pages = GaugeMetricFamily(
            "conveyor_docparse_pages_per_second",
            f"Pages per second of run time over the last {SPEED_SAMPLE} docparse tasks",
        )
        value = docparse_pages_per_second(recent.get("docparse", []))
        if value is not None:
            pages.add_metric([], value)
        return [speed, pages]


def build_registry(service: ConveyorService) -> CollectorRegistry:
    """One registry per app: backend metrics plus this process's CPU and memory."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BackendCollector(service))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry
