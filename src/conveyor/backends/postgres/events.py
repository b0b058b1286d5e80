"""The event store on PostgreSQL (``backends/sql_events.py``), on a small pool of its own.

Events are numbered ``n`` as they are written, by transactions that commit in any
order; a reader of ``seq > since`` must never skip one that commits late, so ``seq``
is given afterwards by :meth:`PostgresEventStore.sequence`: under an advisory lock,
to the rows visible then, in ``n`` order, after the largest ``seq`` given.  Each such
transaction commits before the next one starts numbering, so ``seq`` grows in the
order rows become visible to readers.  One task's events are written by transactions
that its row lock serialises, so they are numbered in the order they happened.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from conveyor.backends.sql_auth import AuthCursor
from conveyor.backends.sql_events import SQLEventStore

# advisory lock key (the single-bigint key space): "CONVEY" + a number
# (0x434F4E5645590001 migrations, ...0002 the reaper)
SEQUENCE_LOCK = 0x434F4E5645590019
SEQUENCE_BATCH = 5000


def _configure(conn: Any) -> None:
    conn.execute("SET TIME ZONE 'UTC'")


class PostgresEventStore(SQLEventStore):
    ph = "%s"
    claim_lock = " FOR UPDATE OF d SKIP LOCKED"

    def __init__(self, conninfo: str, *, pool_max: int = 4) -> None:
        self._pool: ConnectionPool[Any] = ConnectionPool(
            conninfo,
            min_size=1,
            max_size=max(1, pool_max),
            kwargs={"autocommit": True},
            configure=_configure,
            check=ConnectionPool.check_connection,
            name="conveyor-events",
            open=True,
        )

    @contextmanager
    def _tx(self) -> Iterator[AuthCursor]:
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            yield cur

    def _jin(self, value: Any) -> Any:
        return Jsonb(value)

    def sequence(self) -> int:
        with self._tx() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (SEQUENCE_LOCK,))
            cur.execute(
                "WITH base AS (SELECT coalesce(max(seq), 0) AS m FROM events), "
                "todo AS (SELECT n, row_number() OVER (ORDER BY n) AS r FROM "
                " (SELECT n FROM events WHERE seq IS NULL ORDER BY n LIMIT %s) AS q) "
                "UPDATE events e SET seq = base.m + todo.r FROM base, todo WHERE e.n = todo.n",
                (SEQUENCE_BATCH,),
            )
            return int(cur.rowcount or 0)

    def close(self) -> None:
        self._pool.close()
