"""Rules every engine applies the same way, written once.

Engines keep each transition atomic in their own terms (a SQL transaction,
a DynamoDB conditional write); what a transition *decides* is the same
everywhere and lives here:

* how an attempt that did not complete ends (``end_attempt``): cancelled when
  a cancel was requested, back to ``pending`` after a back-off while attempts
  remain and the error is retryable, ``failed`` otherwise;
* the back-off (``backoff_seconds``);
* closing the open attempt in a task's history (``close_attempt``);
* what cancel and retry accept (``cancel_action``, ``check_retry``);
* when a completion is a repeat of one already made (``completed_by``), and
  the outputs once they are published (``committed_outputs``).

SQLite and AWS apply the Python functions to the row or item they read;
PostgreSQL decides inside one statement, so the same rules are also rendered
as SQL expressions here (``end_attempt_sql``, ``backoff_sql``,
``close_attempt_sql``) and its ``queries.sql`` takes them in by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from conveyor.errors import Conflict, InvalidRequest
from conveyor.models import CHILDREN_HOLD as CHILDREN_HOLD  # re-exported: see models.py
from conveyor.models import Attempt, Lease, OutputFile, Task, TaskStatus

DEFAULT_BACKOFF_BASE_S = 5.0
DEFAULT_BACKOFF_MAX_S = 600.0

# the error and code a task ends with when a cancel stopped it
CANCELLED_BY_REQUEST = "cancelled by request"
CANCELLED_CODE = "cancelled"
# the error ``clear_pending`` leaves on the tasks it cancels
QUEUE_CLEARED = "cancelled: queue cleared"
LEASE_EXPIRED_CODE = "lease_expired"


_LEASE_EXPIRED = "lease expired: worker {} stopped heartbeating"


def lease_expired_error(worker_id: str | None) -> str:
    """The error an expired lease leaves on its task."""
    return _LEASE_EXPIRED.format(worker_id)


def lease_expired_error_sql(worker_id: str = "worker_id") -> str:
    """:func:`lease_expired_error` in PostgreSQL (``%%`` for psycopg's placeholders)."""
    return f"format('{_LEASE_EXPIRED.replace('{}', '%%s')}', {worker_id})"


# -- back-off ------------------------------------------------------------------------
def backoff_seconds(
    attempts: int, base: float = DEFAULT_BACKOFF_BASE_S, cap: float = DEFAULT_BACKOFF_MAX_S
) -> float:
    """Exponential back-off after the ``attempts``-th failed attempt."""
    return float(min(cap, base * (2 ** max(0, attempts - 1))))


def backoff_sql(attempts: str = "attempts") -> str:
    """``now() + backoff_seconds(attempts)`` in PostgreSQL (``%(backoff_base)s`` and
    ``%(backoff_max)s`` are bound by the caller)."""
    return (
        "now() + make_interval(secs => least(%(backoff_max)s::float8, "
        f"%(backoff_base)s::float8 * power(2, greatest(0, {attempts} - 1))))"
    )


# -- ending an attempt -----------------------------------------------------------------
@dataclass(frozen=True)
class AttemptEnd:
    """What a failed (or cancelled, or expired) attempt makes of its task."""

    status: TaskStatus  # pending (to be retried), failed or cancelled
    outcome: str  # the closed attempt's outcome in the history
    error: str
    code: str | None
    retry_in_s: float | None = None  # pending: the back-off before the next attempt

    @property
    def final(self) -> bool:
        return self.status != TaskStatus.PENDING


def end_attempt(
    *,
    cancel_requested: bool,
    attempts: int,
    max_attempts: int,
    error: str,
    retryable: bool,
    code: str | None,
    outcome: str = "failed",
    backoff_base: float = DEFAULT_BACKOFF_BASE_S,
    backoff_max: float = DEFAULT_BACKOFF_MAX_S,
) -> AttemptEnd:
    """How an attempt that did not complete ends.

    A requested cancel wins (``cancelled``); a retryable error with attempts
    left puts the task back to ``pending`` after ``backoff_seconds(attempts)``
    (the attempt's outcome ``retry``, or ``outcome`` itself when it is not
    ``failed``, e.g. ``lease_expired``); anything else is ``failed``.
    """
    if cancel_requested:
        return AttemptEnd(TaskStatus.CANCELLED, "cancelled", CANCELLED_BY_REQUEST, CANCELLED_CODE)
    if retryable and attempts < max_attempts:
        return AttemptEnd(
            TaskStatus.PENDING,
            outcome if outcome != "failed" else "retry",
            error,
            code,
            backoff_seconds(attempts, backoff_base, backoff_max),
        )
    return AttemptEnd(TaskStatus.FAILED, outcome, error, code)


def end_attempt_sql(*, retryable: str, error: str, code: str, outcome: str, retry: str) -> str:
    """:func:`end_attempt` as a PostgreSQL ``SET`` list over the row as it was.

    The arguments are SQL expressions: ``retryable`` a boolean, ``error`` and
    ``code`` text, ``outcome`` the outcome of a final failure and ``retry`` that
    of an attempt to be retried.  Every expression reads the row before the
    update, so the new status is computed the same way in each of them.
    """
    new = (
        f"(CASE WHEN cancel_requested THEN 'cancelled' "
        f"WHEN ({retryable}) AND attempts < max_attempts THEN 'pending' ELSE 'failed' END)"
    )
    err = f"(CASE WHEN cancel_requested THEN '{CANCELLED_BY_REQUEST}' ELSE ({error})::text END)"
    how = (
        f"(CASE {new} WHEN 'cancelled' THEN 'cancelled' "
        f"WHEN 'pending' THEN {retry} ELSE {outcome} END)"
    )
    return (
        f"status = {new}, error = {err}, "
        f"error_code = CASE WHEN cancel_requested THEN '{CANCELLED_CODE}' "
        f"ELSE ({code})::text END, "
        "lease_token = NULL, lease_expires = NULL, "
        f"not_before = CASE WHEN {new} = 'pending' THEN {backoff_sql()} END, "
        "updated_at = now(), "
        f"finished_at = CASE WHEN {new} = 'pending' THEN NULL ELSE now() END, "
        f"history = {close_attempt_sql(how, err)}"
    )


# -- the history -----------------------------------------------------------------------
def close_attempt(
    history: list[Attempt], outcome: str, error: str | None, now: datetime
) -> list[Attempt]:
    """The history with its open (last, unfinished) attempt closed as ``outcome``."""
    history = list(history)
    if history and history[-1].finished_at is None:
        history[-1] = history[-1].model_copy(
            update={"finished_at": now, "outcome": outcome, "error": error}
        )
    return history


def close_attempt_sql(outcome: str, error: str) -> str:
    """:func:`close_attempt` on a PostgreSQL ``history`` jsonb array (SQL expressions in)."""
    return (
        "CASE WHEN jsonb_array_length(history) > 0 AND (history -> -1 ->> 'finished_at') IS NULL "
        "THEN jsonb_set(history, '{-1}', (history -> -1) || jsonb_build_object("
        f"'finished_at', now(), 'outcome', ({outcome})::text, 'error', ({error})::text)) "
        "ELSE history END"
    )


# -- operator actions ------------------------------------------------------------------
def cancel_action(task_id: str, status: TaskStatus) -> Literal["cancel", "request"]:
    """``cancel`` a pending task at once; ``request`` the cancel of a running one (its
    worker stops it and reports back); a final task has nothing to cancel."""
    if status == TaskStatus.PENDING:
        return "cancel"
    if status == TaskStatus.PROCESSING:
        return "request"
    raise Conflict(f"task {task_id} is already {status.value}; nothing to cancel")


def check_retry(task_id: str, status: TaskStatus) -> None:
    """Only a failed or cancelled task goes back to the queue."""
    if status not in (TaskStatus.FAILED, TaskStatus.CANCELLED):
        raise Conflict(
            f"task {task_id} is {status.value}; only failed or cancelled tasks can be retried"
        )


# -- completion ------------------------------------------------------------------------
def completed_by(
    status: str,
    token: str | None,
    lease: Lease,
    stored: list[OutputFile],
    outputs: list[OutputFile],
) -> bool:
    """Whether a task in ``status`` holding ``token`` and ``stored`` outputs is what
    completing it under ``lease`` with ``outputs`` made (a repeat of that call)."""

    def names(files: list[OutputFile]) -> list[tuple[str, str, str, int]]:
        return [(o.name, o.bucket, o.key, o.size) for o in files]

    return (
        status == "completed"
        and token is not None
        and token == lease.token
        and names(stored) == names(outputs)
    )


def committed_outputs(outputs: list[OutputFile]) -> list[OutputFile]:
    """The outputs with their staged twins forgotten (they are at their final keys)."""
    return [o.model_copy(update={"staged_key": None}) for o in outputs]


def committed_outputs_json(outputs: list[OutputFile]) -> str:
    """:func:`committed_outputs` as the JSON array the SQL engines store."""
    return json.dumps([o.model_dump(mode="json") for o in committed_outputs(outputs)])


# -- parents and children --------------------------------------------------------------
# ``WorkerQueue.spawn_children`` hands a parent back held (pending, ``not_before`` =
# CHILDREN_HOLD, never due, so claims need no change) until its last child completes;
# the attempt that spawned is closed ``spawned`` and not counted.  Cascades (SQL
# triggers in the 0006 migrations, code in the AWS engine): the last child completed
# clears the hold; a child failed for good or cancelled fails its held parent
# (CHILD_FAILED_CODE, ``child_failed_error``); a parent failed or cancelled cancels its
# pending children and asks its running ones to stop; a retried parent starts over
# (children 0, the old ones no longer its children).
CHILD_FAILED_CODE = "child_failed"
SPAWNED = "spawned"
MAX_CHILDREN = 10_000


def child_failed_error(child_id: str, status: str, error: str | None) -> str:
    """The error a parent fails with when a child failed for good or was cancelled."""
    if status == TaskStatus.CANCELLED:
        return f"child {child_id} was cancelled"
    return f"child {child_id} failed: {error or 'no reason given'}"


def parent_ended_error(parent_id: str, status: str) -> str:
    """The error a child is cancelled with when its parent failed or was cancelled."""
    return f"cancelled: parent {parent_id} {status}"


def held_progress(n: int) -> str:
    """The progress a held parent shows (JSON, as the SQL engines store it)."""
    return json.dumps({"percent": 0.0, "phase": "children", "message": f"waiting for {n} children"})


def prepare_children(parent: Task, children: list[Task]) -> list[Task]:
    """The children as stored: pending, naming ``parent``, submitted by its submitter and
    through its trigger, at least its priority, new (no attempts, outputs, history)."""
    if not children:
        raise InvalidRequest("spawn_children needs at least one child")
    if len(children) > MAX_CHILDREN:
        raise InvalidRequest(f"at most {MAX_CHILDREN} children per parent")
    out = []
    for child in children:
        out.append(
            child.model_copy(
                update={
                    "status": TaskStatus.PENDING,
                    "parent_id": parent.id,
                    "children": 0,
                    "submitted_by": child.submitted_by or parent.submitted_by,
                    "trigger": parent.trigger,
                    "priority": max(child.priority, parent.priority),
                    "attempts": 0,
                    "outputs": [],
                    "history": [],
                    "not_before": None,
                    "cancel_requested": False,
                    "idempotency_key": None,
                }
            )
        )
    return out


def spawn_repeat(status: str, token: str | None, children: int, lease: Lease) -> bool:
    """Whether a parent found in this state is what ``spawn_children`` under ``lease``
    made (a repeat of that call whose answer was lost): the lease token stays on it."""
    return status == TaskStatus.PENDING and children > 0 and token == lease.token
