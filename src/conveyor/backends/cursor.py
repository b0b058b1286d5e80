"""The list cursor, one encoding for every engine.

``TaskStore.list`` pages newest first over ``(created_at, id)``; its cursor
is the last row's key, ``base64url("<microseconds since the epoch>|<id>")``,
opaque to callers.  Task times have microsecond precision everywhere (the
model's datetimes), so the key is exact on every engine: SQLite compares
``created_at`` as the UNIX seconds it stores, PostgreSQL as a timestamptz,
DynamoDB as the ``created_key`` of its indexes.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

from conveyor.errors import InvalidRequest

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def encode_cursor(created_at: datetime, task_id: str) -> str:
    micros = (created_at - _EPOCH) // timedelta(microseconds=1)
    raw = f"{micros}|{task_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """``(created_at, id)`` of the row a page ended at; ``InvalidRequest`` if the
    cursor is not one :func:`encode_cursor` made."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        micros, task_id = raw.split("|", 1)
        if not task_id or not micros.lstrip("-").isdigit():
            raise ValueError(cursor)
        return _EPOCH + timedelta(microseconds=int(micros)), task_id
    except Exception:
        raise InvalidRequest(
            f"invalid cursor {cursor!r}: pass back next_cursor unchanged"
        ) from None
