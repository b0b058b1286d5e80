"""Slurm job states, and what each means for the Conveyor attempt the job runs.

A job runs one attempt of one task and reports that attempt's outcome itself, through
the worker protocol.  The executor acts on a job's state only when the job could not
report: it was queued (PENDING: the reason becomes the task's waiting reason), it was
stopped from outside (time limit, memory, preemption, a node failure, scancel), or it
died before it could say anything.  :func:`outcome` is that table, and
docs/slurm.md prints it.
"""

from __future__ import annotations

from dataclasses import dataclass

# a job in one of these may still run (or run again): the executor keeps watching it
ACTIVE = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "SUSPENDED",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
        "STOPPED",
        "RESV_DEL_HOLD",
    }
)
# the job is over: it reported its attempt's outcome, or the executor records one
TERMINAL = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "TIMEOUT",
        "NODE_FAIL",
        "PREEMPTED",
        "OUT_OF_MEMORY",
        "CANCELLED",
        "BOOT_FAIL",
        "DEADLINE",
        "SPECIAL_EXIT",
        "REVOKED",
    }
)


def normal_state(state: str) -> str:
    """``CANCELLED by 0`` → ``CANCELLED``; ``RUNNING+COMPLETING`` flags dropped; upper case."""
    word = (state or "").strip().split()[0] if (state or "").strip() else "UNKNOWN"
    return word.split("+")[0].upper()


def is_terminal(state: str) -> bool:
    return normal_state(state) in TERMINAL


def is_active(state: str) -> bool:
    return normal_state(state) in ACTIVE


@dataclass(frozen=True)
class Outcome:
    """What the executor records on the attempt when the job ended without reporting."""

    code: str
    retryable: bool
    message: str
    cancelled: bool = False  # Conveyor asked for it: the task ends cancelled


@dataclass(frozen=True)
class StateRule:
    code: str  # the attempt's error code
    retryable: bool
    summary: str  # what the attempt's error says after "Slurm job N STATE"
    meaning: str  # docs/slurm.md's table


# the job ended without reporting its attempt: what the executor records (docs/slurm.md's
# states table; tests/unit/test_slurm.py keeps them in step)
RULES: dict[str, StateRule] = {
    "COMPLETED": StateRule(
        "slurm_no_report",
        True,
        "the job exited 0 without reporting its attempt; retried",
        "the job reports its attempt itself; recorded only when it did not (retried)",
    ),
    "FAILED": StateRule(
        "slurm_failed",
        True,
        "the job failed before it could report (it could not start or reach the API); retried",
        "the job exited non-zero before it could report (Python missing, API unreachable, "
        "credential refused): retried",
    ),
    "TIMEOUT": StateRule(
        "slurm_timeout",
        False,
        "it ran past its time limit; not retried (raise timeout_s and retry)",
        "ran past its time limit (the task's timeout_s): the same limit would stop it again, "
        "so not retried",
    ),
    "OUT_OF_MEMORY": StateRule(
        "slurm_out_of_memory",
        False,
        "it used more memory than it asked for; not retried (raise memory and retry)",
        "used more memory than it asked for (params.memory): not retried",
    ),
    "NODE_FAIL": StateRule(
        "slurm_node_fail",
        True,
        "its node failed; retried",
        "its node failed: not the task's fault, retried",
    ),
    "BOOT_FAIL": StateRule(
        "slurm_node_fail",
        True,
        "its node failed to boot; retried",
        "its node failed to boot: retried",
    ),
    "PREEMPTED": StateRule(
        "slurm_preempted",
        True,
        "preempted by other work; retried",
        "preempted by higher-priority work: not the task's fault, retried",
    ),
    "CANCELLED": StateRule(
        "slurm_cancelled",
        False,
        "cancelled from Slurm's side (scancel), not by Conveyor; not retried",
        "cancelled from Slurm's side (scancel, an admin): the attempt fails with that reason, "
        "not retried; a cancel asked in Conveyor ends the task cancelled instead",
    ),
    "DEADLINE": StateRule(
        "slurm_deadline",
        False,
        "its deadline passed before it could run; not retried",
        "its deadline passed before it could run: not retried",
    ),
}
UNKNOWN = StateRule(
    "slurm_lost",
    True,
    "the job is gone from Slurm without reporting its attempt; retried",
    "gone from Slurm (past MinJobAge) without a report: retried",
)
_NO_REASON = ("", "None", "(null)", "TimeLimit", "NonZeroExitCode")


def outcome(
    job_id: str,
    state: str,
    *,
    reason: str = "",
    exit_code: int | None = None,
    signal: int | None = None,
    cancel_requested: bool = False,
    time_limit_min: int | None = None,
) -> Outcome:
    """What to record on the attempt of a job that ended (``state``) without reporting."""
    word = normal_state(state)
    if word == "CANCELLED" and cancel_requested:
        return Outcome("cancelled", False, "cancelled by request", cancelled=True)
    rule = RULES.get(word, UNKNOWN)
    detail = ""
    if word == "TIMEOUT" and time_limit_min:
        detail = f" (its time limit: {time_limit_min} min)"
    elif word == "FAILED":
        if signal:
            detail = f" (killed by signal {signal})"
        elif exit_code is not None:
            detail = f" (exit code {exit_code})"
    why = f"; Slurm's reason: {reason}" if reason not in _NO_REASON else ""
    head = f"Slurm job {job_id} {word}" if word in RULES else f"Slurm job {job_id}"
    return Outcome(rule.code, rule.retryable, f"{head}{detail}: {rule.summary}{why}")


def decode_wait_status(status: int | None) -> tuple[int | None, int | None]:
    """``(exit code, signal)`` from the raw wait status squeue's JSON reports."""
    if status is None:
        return None, None
    if status & 0x7F:
        return None, status & 0x7F
    return (status >> 8) & 0xFF, None
