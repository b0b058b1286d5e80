"""The engine's fixed statements: ``queries.sql``, loaded once by name.

The fragments are the task columns and the shared rules (``backends/rules.py``)
rendered as SQL, so the rules are written once although PostgreSQL applies them
inside its statements.
"""

from __future__ import annotations

from conveyor.backends import rules
from conveyor.backends.sql import COLUMNS, MAY_HAVE_EXPIRED, histogram_select, load_queries

CHANNEL = "conveyor_work"  # NOTIFY channel: whatever makes work claimable wakes idle workers


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


QUERIES = load_queries(
    "conveyor.backends.postgres",
    "queries.sql",
    {
        "columns": COLUMNS,
        "channel": CHANNEL,
        "end_failed_attempt": rules.end_attempt_sql(
            retryable="%(retryable)s::boolean",
            error="%(error)s",
            code="%(code)s",
            outcome="'failed'",
            retry="'retry'",
        ),
        "end_expired_attempt": rules.end_attempt_sql(
            retryable="true",
            error=rules.lease_expired_error_sql(),
            code=_literal(rules.LEASE_EXPIRED_CODE),
            outcome=_literal(rules.LEASE_EXPIRED_CODE),
            retry=_literal(rules.LEASE_EXPIRED_CODE),
        ),
        "close_completed_attempt": rules.close_attempt_sql("'completed'", "NULL"),
        "close_spawned_attempt": rules.close_attempt_sql(_literal(rules.SPAWNED), "NULL"),
        "close_released_attempt": rules.close_attempt_sql(
            "CASE WHEN cancel_requested THEN 'cancelled' ELSE 'released' END",
            f"CASE WHEN cancel_requested THEN {_literal(rules.CANCELLED_BY_REQUEST)} "
            "ELSE %(error)s::text END",
        ),
        "cancelled_by_request": _literal(rules.CANCELLED_BY_REQUEST),
        "cancelled_code": _literal(rules.CANCELLED_CODE),
        "queue_cleared": _literal(rules.QUEUE_CLEARED),
        "histograms": f"{histogram_select('run', 'r')}, {histogram_select('wait', 'w')}",
        "may_have_expired": MAY_HAVE_EXPIRED,
        "children_hold": f"{_literal(rules.CHILDREN_HOLD.isoformat())}::timestamptz",
    },
)
