"""Helpers both SQL engines (SQLite and PostgreSQL) share: the aggregate behind
``metrics_snapshot``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from conveyor.metrics_data import DURATION_BUCKETS, HistogramData, MetricsSnapshot

HISTOGRAM_COLUMNS = 2 + len(DURATION_BUCKETS)

# Only these rows can hold a lease expiry in their history: a task completed on
# its first attempt (most of a table) never lost a lease, so engines skip
# parsing its history.
MAY_HAVE_EXPIRED = "(attempts > 1 OR (attempts = 1 AND status IN ('pending', 'failed')))"


def histogram_select(expr: str, prefix: str = "h") -> str:
    """SQL select list ``count, sum, count per bucket`` of ``expr`` (SQLite and PostgreSQL).

    NULL values are not counted, so one pass can build several histograms
    from ``CASE`` expressions.
    """
    cols = [f"COUNT({expr})", f"COALESCE(SUM({expr}), 0)"]
    cols += [f"COUNT(*) FILTER (WHERE {expr} <= {b})" for b in DURATION_BUCKETS]
    # distinct names: dict rows would otherwise fold the unnamed columns into one
    return ", ".join(f"{c} AS {prefix}{i}" for i, c in enumerate(cols))


def histogram_from_row(row: Sequence[Any]) -> HistogramData:
    """Inverse of :func:`histogram_select` for the row's columns after the kind."""
    return HistogramData(count=int(row[0]), sum=float(row[1]), buckets=[int(v) for v in row[2:]])


def add_histogram(target: dict[str, HistogramData], kind: str, row: Sequence[Any]) -> None:
    """Add one group's :func:`histogram_select` columns to ``target[kind]``."""
    h = histogram_from_row(row)
    if h.count == 0:
        return
    old = target.get(kind)
    if old is not None:
        h = HistogramData(
            count=old.count + h.count,
            sum=old.sum + h.sum,
            buckets=[a + b for a, b in zip(old.buckets, h.buckets, strict=True)],
        )
    target[kind] = h


def add_snapshot_row(snap: MetricsSnapshot, row: Sequence[Any]) -> None:
    """One ``(kind, state, n, retries, expired, run histogram, wait histogram)`` group."""
    kind, state, n, retries, expired = str(row[0]), str(row[1]), row[2], row[3], row[4]
    snap.tasks.setdefault(kind, {})[state] = int(n)
    snap.retries[kind] = snap.retries.get(kind, 0) + int(retries or 0)
    snap.lease_expiries[kind] = snap.lease_expiries.get(kind, 0) + int(expired or 0)
    add_histogram(snap.duration, kind, row[5 : 5 + HISTOGRAM_COLUMNS])
    add_histogram(snap.queue_wait, kind, row[5 + HISTOGRAM_COLUMNS :])
