"""What a task store reports for dashboards and ``/metrics``: plain models, no engine.

``TaskStore.throughput`` answers ``ThroughputPoint`` windows and
``TaskStore.metrics_snapshot`` a ``MetricsSnapshot``; ``conveyor.api.metrics``
turns the snapshot into Prometheus families and the console draws the
windows.  Engines fill them; the SQL engines share the aggregate query
helpers in ``conveyor.backends.sql``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import BaseModel


class ThroughputPoint(BaseModel):
    """Tasks that finished in one window ``[start, start + bucket_s)``."""

    start: datetime
    completed: int = 0
    failed: int = 0


def throughput_windows(
    since: datetime, bucket_s: int, counts: dict[tuple[int, str], int], now: datetime | None = None
) -> list[ThroughputPoint]:
    """Every window from ``since`` to ``now``, filled from ``{(window, status): n}``."""
    now = now or datetime.now(UTC)
    n = max(1, int((now - since).total_seconds() // bucket_s) + 1)
    return [
        ThroughputPoint(
            start=since + timedelta(seconds=i * bucket_s),
            completed=counts.get((i, "completed"), 0),
            failed=counts.get((i, "failed"), 0),
        )
        for i in range(n)
    ]


# Upper bounds (seconds) of the task duration and queue-wait histograms: a
# thumbnail takes a second, a long H.265 rendition or a training run hours.
DURATION_BUCKETS: tuple[float, ...] = (
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
    1800,
    3600,
    7200,
    21600,
)


class HistogramData(BaseModel):
    """Cumulative counts per upper bound of ``DURATION_BUCKETS`` (``+Inf`` is ``count``)."""

    buckets: list[int]
    count: int = 0
    sum: float = 0.0


class MetricsSnapshot(BaseModel):
    """What ``/metrics`` reads from the engine at scrape time.

    Read from the shared engine rather than counted in one process, so every
    API process behind a load balancer reports the same numbers.
    """

    # kind -> status -> tasks; ``delayed`` is split out of ``pending``
    tasks: dict[str, dict[str, int]] = {}
    # completed tasks: finished_at - started_at (the attempt that completed)
    duration: dict[str, HistogramData] = {}
    # started tasks: started_at - created_at (time spent queued, back-offs included)
    queue_wait: dict[str, HistogramData] = {}
    # kind -> attempts beyond the first, over every task
    retries: dict[str, int] = {}
    # kind -> attempts that ended because the worker's lease expired
    lease_expiries: dict[str, int] = {}


def histogram_from_values(values: list[float]) -> HistogramData:
    values = [max(0.0, v) for v in values]
    return HistogramData(
        buckets=[sum(1 for v in values if v <= b) for b in DURATION_BUCKETS],
        count=len(values),
        sum=float(sum(values)),
    )
