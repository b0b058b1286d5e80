"""The event store both SQL engines share (``events_base.EventStore``).

The SQL is the same on SQLite and PostgreSQL but for the placeholder, the time and
JSON types, and how the stream is sequenced; each engine's ``events.py`` gives a
transaction and those conversions.  The tables and the triggers that fill ``events``
come from each engine's ``0005_events`` migration.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from conveyor.backends.events_base import Attempt, EventStore
from conveyor.backends.sql_auth import AuthCursor
from conveyor.events.model import (
    Delivery,
    DeliveryPage,
    DeliveryState,
    Endpoint,
    Event,
    EventType,
)

ECOLS = "seq, id, type, task_id, kind, status, submitted_by, at, data"
PCOLS = "id, url, secret, events, kinds, task_id, description, created_at, created_by"
DCOLS = (
    "id, event_id, event_seq, event_type, endpoint_id, task_id, state, attempts, created_at, "
    "next_at, last_at, last_status, last_error, last_latency_ms, last_body"
)


class SQLEventStore(EventStore):
    """Shared logic; subclasses give a cursor, the placeholder and the conversions."""

    ph = "?"
    greatest = "greatest"  # SQLite: max (two arguments)

    @contextmanager
    def _tx(self) -> Iterator[AuthCursor]:  # pragma: no cover - overridden
        raise NotImplementedError
        yield

    @contextmanager
    def _read(self) -> Iterator[AuthCursor]:
        """Reads: no write lock (SQLite overrides it with a plain read)."""
        with self._tx() as cur:
            yield cur

    def _t(self, dt: datetime | None) -> Any:
        return dt

    def _dt(self, value: Any) -> datetime | None:
        return value  # type: ignore[no-any-return]

    def _jin(self, value: Any) -> Any:
        return json.dumps(value)

    def _jout(self, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    def _q(self, sql: str) -> str:
        return sql.replace("?", self.ph)

    # -- rows ------------------------------------------------------------------------
    def _event(self, r: Sequence[Any]) -> Event:
        at = self._dt(r[7])
        assert at is not None
        return Event(
            seq=int(r[0] or 0),
            id=r[1],
            type=EventType(r[2]),
            task_id=r[3],
            kind=r[4],
            status=r[5],
            submitted_by=r[6],
            at=at,
            data=self._jout(r[8]) or {},
        )

    def _endpoint(self, r: Sequence[Any]) -> Endpoint:
        created = self._dt(r[7])
        assert created is not None
        return Endpoint(
            id=r[0],
            url=r[1],
            secret=r[2],
            events=self._jout(r[3]) or [],
            kinds=self._jout(r[4]) or [],
            task_id=r[5],
            description=r[6] or "",
            created_at=created,
            created_by=r[8],
        )

    def _delivery(self, r: Sequence[Any]) -> Delivery:
        created = self._dt(r[8])
        assert created is not None
        return Delivery(
            id=r[0],
            event_id=r[1],
            event_seq=int(r[2]),
            event_type=r[3],
            endpoint_id=r[4],
            task_id=r[5],
            state=DeliveryState(r[6]),
            attempts=int(r[7]),
            created_at=created,
            next_at=self._dt(r[9]),
            last_at=self._dt(r[10]),
            last_status=r[11],
            last_error=r[12],
            last_latency_ms=r[13],
            last_body=r[14],
        )

    def set_progress_interval(self, seconds: float) -> None:
        with self._tx() as cur:
            cur.execute(
                self._q(
                    "INSERT INTO events_config (name, value) VALUES ('progress_s', ?) "
                    "ON CONFLICT (name) DO UPDATE SET value = excluded.value"
                ),
                (max(0.0, float(seconds)),),
            )

    # -- the stream ------------------------------------------------------------------
    def events_after(
        self,
        seq: int,
        *,
        limit: int = 100,
        kinds: list[str] | None = None,
        statuses: list[str] | None = None,
        submitted_by: str | None = None,
        task_id: str | None = None,
    ) -> list[Event]:
        where = ["seq > ?"]
        args: list[Any] = [int(seq)]
        for column, values in (("kind", kinds), ("status", statuses)):
            if values:
                where.append(f"{column} IN ({', '.join('?' * len(values))})")
                args.extend(values)
        if submitted_by is not None:
            where.append("submitted_by = ?")
            args.append(submitted_by)
        if task_id is not None:
            where.append("task_id = ?")
            args.append(task_id)
        args.append(max(1, min(int(limit), 1000)))
        sql = f"SELECT {ECOLS} FROM events WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?"
        with self._read() as cur:
            cur.execute(self._q(sql), args)
            return [self._event(r) for r in cur.fetchall()]

    def last_seq(self) -> int:
        with self._read() as cur:
            cur.execute("SELECT max(seq) FROM events")
            row = cur.fetchone()
        return int(row[0] or 0) if row else 0

    def events_by_seq(self, seqs: list[int]) -> dict[int, Event]:
        if not seqs:
            return {}
        wanted = sorted(set(seqs))
        marks = ", ".join("?" * len(wanted))
        with self._read() as cur:
            cur.execute(self._q(f"SELECT {ECOLS} FROM events WHERE seq IN ({marks})"), wanted)
            return {e.seq: e for e in (self._event(r) for r in cur.fetchall())}

    # -- fan-out ---------------------------------------------------------------------
    _CURSOR = "(SELECT coalesce(max(seq), 0) FROM events_cursor WHERE name = 'fanout')"

    def unfanned(self, limit: int = 500) -> list[Event]:
        with self._read() as cur:
            cur.execute(
                self._q(
                    f"SELECT {ECOLS} FROM events WHERE seq > {self._CURSOR} ORDER BY seq LIMIT ?"
                ),
                (max(1, int(limit)),),
            )
            return [self._event(r) for r in cur.fetchall()]

    def fan_out(self, events: list[Event], deliveries: list[Delivery]) -> None:
        if not events:
            return
        with self._tx() as cur:
            if deliveries:  # one round trip (psycopg pipelines executemany)
                cur.executemany(  # type: ignore[attr-defined]
                    self._q(
                        f"INSERT INTO webhook_deliveries ({DCOLS}) "
                        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) "
                        "ON CONFLICT (event_id, endpoint_id) DO NOTHING"
                    ),
                    [self._delivery_values(d) for d in deliveries],
                )
            cur.execute(
                self._q(
                    "INSERT INTO events_cursor (name, seq) VALUES ('fanout', ?) ON CONFLICT (name) "
                    f"DO UPDATE SET seq = {self.greatest}(events_cursor.seq, excluded.seq)"
                ),
                (max(e.seq for e in events),),
            )

    def _delivery_values(self, d: Delivery) -> tuple[Any, ...]:
        return (
            d.id,
            d.event_id,
            d.event_seq,
            d.event_type,
            d.endpoint_id,
            d.task_id,
            d.state.value,
            d.attempts,
            self._t(d.created_at),
            self._t(d.next_at),
            self._t(d.last_at),
            d.last_status,
            d.last_error,
            d.last_latency_ms,
            d.last_body,
        )

    # -- endpoints -------------------------------------------------------------------
    def add_endpoint(self, endpoint: Endpoint) -> None:
        with self._tx() as cur:
            cur.execute(
                self._q(f"INSERT INTO webhook_endpoints ({PCOLS}) VALUES (?,?,?,?,?,?,?,?,?)"),
                (
                    endpoint.id,
                    endpoint.url,
                    endpoint.secret,
                    self._jin(endpoint.events),
                    self._jin(endpoint.kinds),
                    endpoint.task_id,
                    endpoint.description,
                    self._t(endpoint.created_at),
                    endpoint.created_by,
                ),
            )

    def get_endpoint(self, endpoint_id: str) -> Endpoint | None:
        with self._read() as cur:
            cur.execute(
                self._q(f"SELECT {PCOLS} FROM webhook_endpoints WHERE id = ?"), (endpoint_id,)
            )
            row = cur.fetchone()
        return None if row is None else self._endpoint(row)

    def endpoints(self, *, task_ids: list[str] | None = None) -> list[Endpoint]:
        sql = f"SELECT {PCOLS} FROM webhook_endpoints WHERE task_id IS NULL"
        args: list[Any] = []
        if task_ids:
            sql += f" OR task_id IN ({', '.join('?' * len(task_ids))})"
            args.extend(task_ids)
        with self._read() as cur:
            cur.execute(self._q(sql + " ORDER BY created_at, id"), args)
            return [self._endpoint(r) for r in cur.fetchall()]

    def delete_endpoint(self, endpoint_id: str) -> bool:
        with self._tx() as cur:
            cur.execute(
                self._q("DELETE FROM webhook_deliveries WHERE endpoint_id = ?"), (endpoint_id,)
            )
            cur.execute(self._q("DELETE FROM webhook_endpoints WHERE id = ?"), (endpoint_id,))
            return bool(cur.rowcount)

    # -- deliveries ------------------------------------------------------------------
    claim_lock = ""  # PostgreSQL: FOR UPDATE SKIP LOCKED

    def claim_deliveries(self, now: datetime, lease_s: float, limit: int) -> list[Delivery]:
        from datetime import timedelta

        until = now + timedelta(seconds=lease_s)
        with self._tx() as cur:
            cur.execute(
                self._q(
                    "SELECT d.id FROM webhook_deliveries d "
                    "WHERE d.state = 'pending' AND d.next_at <= ? AND NOT EXISTS ("
                    " SELECT 1 FROM webhook_deliveries p WHERE p.endpoint_id = d.endpoint_id"
                    " AND p.task_id = d.task_id AND p.state = 'pending'"
                    " AND p.event_seq < d.event_seq) "
                    f"ORDER BY d.next_at LIMIT ?{self.claim_lock}"
                ),
                (self._t(now), max(1, int(limit))),
            )
            ids = [r[0] for r in cur.fetchall()]
            if not ids:
                return []
            cur.execute(
                self._q(
                    f"UPDATE webhook_deliveries SET next_at = ? WHERE id IN "
                    f"({', '.join('?' * len(ids))}) AND state = 'pending' RETURNING {DCOLS}"
                ),
                (self._t(until), *ids),
            )
            claimed = [self._delivery(r) for r in cur.fetchall()]
        return sorted(claimed, key=lambda d: d.event_seq)

    def record_attempts(self, attempts: list[Attempt]) -> None:
        if not attempts:
            return
        with self._tx() as cur:
            cur.executemany(  # type: ignore[attr-defined]
                self._q(
                    "UPDATE webhook_deliveries SET state = ?, attempts = attempts + 1, "
                    "last_at = ?, next_at = ?, last_status = ?, last_error = ?, "
                    "last_latency_ms = ?, last_body = ? WHERE id = ?"
                ),
                [
                    (
                        a.state.value,
                        self._t(a.at),
                        self._t(a.next_at),
                        a.status,
                        a.error,
                        a.latency_ms,
                        a.body,
                        a.delivery_id,
                    )
                    for a in attempts
                ],
            )

    def get_delivery(self, delivery_id: str) -> Delivery | None:
        with self._read() as cur:
            cur.execute(
                self._q(f"SELECT {DCOLS} FROM webhook_deliveries WHERE id = ?"), (delivery_id,)
            )
            row = cur.fetchone()
        return None if row is None else self._delivery(row)

    def deliveries(
        self,
        *,
        endpoint_id: str | None = None,
        task_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> DeliveryPage:
        limit = max(1, min(int(limit), 500))
        where: list[str] = []
        args: list[Any] = []
        if endpoint_id is not None:
            where.append("endpoint_id = ?")
            args.append(endpoint_id)
        if task_id is not None:
            where.append("task_id = ?")
            args.append(task_id)
        order = "event_seq ASC, id ASC" if task_id is not None else "event_seq DESC, id DESC"
        if cursor:
            seq_text, _, last_id = cursor.partition(":")
            op = ">" if task_id is not None else "<"
            where.append(f"(event_seq {op} ? OR (event_seq = ? AND id {op} ?))")
            args.extend([int(seq_text), int(seq_text), last_id])
        sql = f"SELECT {DCOLS} FROM webhook_deliveries"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY {order} LIMIT ?"
        args.append(limit + 1)
        with self._read() as cur:
            cur.execute(self._q(sql), args)
            rows = [self._delivery(r) for r in cur.fetchall()]
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            next_cursor = f"{last.event_seq}:{last.id}"
        return DeliveryPage(items=rows[:limit], next_cursor=next_cursor)

    def redeliver(self, delivery_id: str, now: datetime) -> Delivery | None:
        with self._tx() as cur:
            cur.execute(
                self._q(
                    "UPDATE webhook_deliveries SET state = 'pending', next_at = ? WHERE id = ?"
                    f" RETURNING {DCOLS}"
                ),
                (self._t(now), delivery_id),
            )
            row = cur.fetchone()
        return None if row is None else self._delivery(row)

    def prune(self, before: datetime) -> int:
        t = self._t(before)
        with self._tx() as cur:
            cur.execute(
                self._q(
                    "DELETE FROM webhook_deliveries WHERE state <> 'pending' AND created_at < ?"
                ),
                (t,),
            )
            n = int(cur.rowcount or 0)
            cur.execute(
                self._q(
                    # never the newest: SQLite's next seq is the largest + 1
                    f"DELETE FROM events WHERE seq <= {self._CURSOR} AND at < ? "
                    "AND seq < (SELECT max(seq) FROM events) AND NOT EXISTS "
                    "(SELECT 1 FROM webhook_deliveries d WHERE d.state = 'pending' "
                    "AND d.event_seq = events.seq)"
                ),
                (t,),
            )
            n += int(cur.rowcount or 0)
            cur.execute(self._q("DELETE FROM events_progress WHERE at < ?"), (t,))
            cur.execute(
                self._q(
                    "DELETE FROM webhook_endpoints WHERE task_id IS NOT NULL AND created_at < ? "
                    "AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d "
                    "WHERE d.endpoint_id = webhook_endpoints.id)"
                ),
                (t,),
            )
            n += int(cur.rowcount or 0)
        return n
