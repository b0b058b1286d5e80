"""Prometheus metrics, read from the backend (through the service) at scrape time.

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
from collections.abc import Iterator

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

QUEUE_STATES = ("pending", "delayed", "waiting_for_children", "processing")
OUTCOMES = ("completed", "failed", "cancelled")
LOAD_FACTOR = 5.0  # a read that took t seconds is reused for at least 5 t seconds


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
            snap = self.service.metrics_snapshot()  # fails in seconds when the database is down
            workers = self.service.workers()
            gauges = self._kind_gauges()
        except Exception as exc:  # a scrape must answer even when the database is down
            log.warning("metrics: backend read failed: %s", exc)
            up.add_metric([], 0)
            out.append(up)
            return out
        up.add_metric([], 1)
        out.append(up)
        out.extend(self._task_metrics(snap))
        out.extend(self._worker_metrics(workers))
        out.extend(gauges)
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
            "Tasks waiting or running, by kind and status "
            "(pending, delayed, waiting_for_children, processing)",
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

    def _kind_gauges(self) -> list[Metric]:
        """Each kind's own gauges (its processor's ``gauges``: the transcode speed ratio,
        docparse pages per second, ...), always declared, from its recent tasks."""
        out: list[Metric] = []
        for kind, processor in self.service.registry.items():

            def recent(n: int, kind: str = kind) -> list[Task]:
                return self.service.recent_completed(kind, n)

            try:
                out.extend(processor.gauges(recent))
            except Exception:  # one kind's gauges must not cost the others theirs
                log.exception("metrics: the gauges of kind %r failed", kind)
        return out


def build_registry(service: ConveyorService) -> CollectorRegistry:
    """One registry per app: backend metrics plus this process's CPU and memory."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BackendCollector(service))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry
