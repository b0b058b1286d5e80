"""Rules every engine applies the same way, written once.

Engines keep their transitions atomic in their own terms; what a transition
*decides* is the same everywhere and lives here.
"""

from __future__ import annotations

import json

from conveyor.models import Lease, OutputFile

DEFAULT_BACKOFF_BASE_S = 5.0
DEFAULT_BACKOFF_MAX_S = 600.0


def backoff_seconds(
    attempts: int, base: float = DEFAULT_BACKOFF_BASE_S, cap: float = DEFAULT_BACKOFF_MAX_S
) -> float:
    """Exponential back-off after the ``attempts``-th failed attempt."""
    return float(min(cap, base * (2 ** max(0, attempts - 1))))


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


def committed_outputs_json(outputs: list[OutputFile]) -> str:
    """The outputs with their staged twins forgotten (they are at their final keys)."""
    return json.dumps(
        [o.model_copy(update={"staged_key": None}).model_dump(mode="json") for o in outputs]
    )
