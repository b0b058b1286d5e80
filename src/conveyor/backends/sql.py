"""Helpers both SQL engines (SQLite and PostgreSQL) share: the task columns and their
mapping to a ``Task``, the key filter of ``list``, the aggregate behind
``metrics_snapshot``, and the loader of a ``queries.sql`` file.  (Their auth store
is shared too: ``backends/sql_auth.py``; so is the migration runner:
``backends/migrations.py``.)"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import datetime
from importlib import resources
from typing import Any, Protocol

from conveyor.metrics_data import DURATION_BUCKETS, HistogramData, MetricsSnapshot
from conveyor.models import (
    Attempt,
    InputRef,
    OutputFile,
    Progress,
    Task,
    TaskStatus,
    Trigger,
)

# The ``tasks`` table, in the order submits write it.
COLUMNS = (
    "id, kind, status, priority, input_bucket, input_key, params, outputs, progress, attempts, "
    "max_attempts, error, error_code, worker_id, lease_token, lease_expires, cancel_requested, "
    "created_at, updated_at, started_at, finished_at, not_before, date_partition, "
    "idempotency_key, submitted_by, trigger, history, gpus, external_id, metadata, parent_id, "
    "children"
)
N_COLUMNS = len(COLUMNS.split(", "))


class Row(Protocol):
    """A row read by column name (``sqlite3.Row``, psycopg's dict rows)."""

    def __getitem__(self, key: str, /) -> Any: ...


def task_from_row(
    r: Row,
    *,
    json_value: Callable[[Any], Any],
    time_value: Callable[[Any], datetime | None],
) -> Task:
    """A ``tasks`` row as a ``Task``; ``json_value`` and ``time_value`` read the engine's
    JSON and time columns (SQLite: text and UNIX seconds; PostgreSQL: as they come)."""
    created, updated = time_value(r["created_at"]), time_value(r["updated_at"])
    assert created is not None and updated is not None
    return Task(
        id=r["id"],
        kind=r["kind"],
        status=TaskStatus(r["status"]),
        priority=r["priority"],
        gpus=r["gpus"],
        input=InputRef(bucket=r["input_bucket"], key=r["input_key"])
        if r["input_bucket"] is not None
        else None,
        params=json_value(r["params"]),
        outputs=[OutputFile.model_validate(o) for o in json_value(r["outputs"])],
        progress=Progress.model_validate(json_value(r["progress"]) or {}),
        attempts=r["attempts"],
        max_attempts=r["max_attempts"],
        error=r["error"],
        error_code=r["error_code"],
        worker_id=r["worker_id"],
        created_at=created,
        updated_at=updated,
        started_at=time_value(r["started_at"]),
        finished_at=time_value(r["finished_at"]),
        not_before=time_value(r["not_before"]),
        date_partition=r["date_partition"],
        idempotency_key=r["idempotency_key"],
        submitted_by=r["submitted_by"],
        trigger=Trigger(r["trigger"]),
        cancel_requested=bool(r["cancel_requested"]),
        history=[Attempt.model_validate(a) for a in json_value(r["history"])],
        external_id=r["external_id"],
        metadata=json_value(r["metadata"]) or {},
        parent_id=r["parent_id"],
        children=r["children"],
    )


def key_pattern(text: str) -> str:
    """The ``LIKE`` pattern (``ESCAPE '\\'``) of ``list(text=...)``: a substring of the
    input key in which ``%`` and ``_`` match themselves."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


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


_QUERY_NAME = re.compile(r"^--\s*name:\s*([a-z][a-z0-9_]*)\s*$")
_FRAGMENT = re.compile(r"\{\{\s*([a-z][a-z0-9_]*)\s*\}\}")


def load_queries(package: str, filename: str, fragments: dict[str, str]) -> dict[str, str]:
    """The statements of ``package``/``filename`` by name (procrastinate's layout).

    Each statement follows a ``-- name: <name>`` line; the comment lines around it
    document it and are not sent.  ``{{ name }}`` is replaced by ``fragments[name]``:
    the task columns, and the rules of ``backends/rules.py`` rendered as SQL, which
    live once in Python.  An unknown or unused fragment, or a name given twice, is
    an error at import time.
    """
    text = resources.files(package).joinpath(filename).read_text(encoding="utf-8")
    bodies: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        named = _QUERY_NAME.match(stripped)
        if named:
            if named.group(1) in bodies:
                raise ValueError(f"{filename}: query {named.group(1)!r} is defined twice")
            current = bodies[named.group(1)] = []
        elif stripped and not stripped.startswith("--"):
            if current is None:
                raise ValueError(f"{filename}: a statement before the first '-- name:' line")
            current.append(line.rstrip())
    used: set[str] = set()

    def fill(match: re.Match[str]) -> str:
        if match.group(1) not in fragments:
            raise ValueError(f"{filename}: unknown fragment {{{{{match.group(1)}}}}}")
        used.add(match.group(1))
        return fragments[match.group(1)]

    queries = {
        name: _FRAGMENT.sub(fill, "\n".join(lines).strip().removesuffix(";").rstrip())
        for name, lines in bodies.items()
    }
    if unused := set(fragments) - used:
        raise ValueError(f"{filename}: fragments never used: {sorted(unused)}")
    if empty := [n for n, q in queries.items() if not q]:
        raise ValueError(f"{filename}: empty queries: {empty}")
    return queries
