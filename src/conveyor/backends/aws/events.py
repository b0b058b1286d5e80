"""Events on the AWS engine (``events_base.EventStore``): the outbox, the stream, webhook
endpoints and deliveries.

The outbox is in the task's own item: every task write is one conditional put of the
whole item (``engine.py``), and a write that changes the task's state appends its event
to the item's ``outbox`` list in that same put, so the state change and its event
commit together or neither does, without a transaction (single-item writes are atomic).
The list keeps the task's events not yet sequenced, oldest first; while it is not empty
the item carries ``outbox_shard`` (``ob#<crc32(id) % OUTBOX_SHARDS>``), the key of the
task table's sparse ``outbox-index`` (keys only), which is how the sequencer finds them.
An index is eventually consistent: it may find a task late, never lose one (the
attribute stays until the events are sequenced), and the item read consistently is
what counts.

Everything else is in the engine's auxiliary table (``<table>-aux``, ``pk`` + ``sk``),
read with consistent reads (the stream and the per-task order must not lag):

* ``evhead`` / ``evhead``: ``seq``, the last place given in the stream.
* ``evs#<seq // STREAM_BUCKET>`` / ``<seq>``: a sequenced event.  ``sequence`` moves
  events from task items here in one ``TransactWriteItems`` per batch that also moves
  ``evhead`` (conditional on its old value: concurrent sequencers serialise) and removes
  them from their items (conditional on the item's ``ver``, which it bumps: a task write
  based on the old list fails its condition and reads again).  So ``seq`` is given in
  the order events become visible, one task's in its list's order; a reader reads
  ``evhead`` first and never past it, so it cannot see a later event before an earlier.
* ``evcursor`` / ``fanout``: how far the dispatcher has made deliveries; ``evconfig`` /
  ``progress_s``: the progress events' interval (the engine reads it).
* ``whk`` / ``<id>``: a subscription; ``whktask#<task id>`` / ``<id>``: a task's own
  webhook; ``whkid#<id>`` / ``whk``: either, by id.  Endpoints never change.
* ``dlv#<endpoint>#<task>`` / ``<event seq>``: a delivery, in its *chain* (one task's
  events to one endpoint), so the oldest pending one of a chain is one consistent
  query away: that is the only one ``claim_deliveries`` may lease.  Its id encodes its
  key (``dlv_<seq>_<endpoint>_<task>``).  ``dlvep#<endpoint>`` and ``dlvtask#<task>``
  list deliveries for the logs; ``dlvdue#<shard>`` / ``<endpoint>#<task>`` marks a
  chain that may have pending deliveries (its ``n`` counts additions, so a claimer that
  finds the chain done removes the mark only if nothing was added meanwhile).

``fan_out`` is idempotent rather than one transaction (a batch of deliveries can be
larger than a transaction): each delivery is put only if its chain item does not exist,
the cursor moves afterwards, so a crash in between repeats the fan-out and adds nothing
twice.
"""

from __future__ import annotations

import contextlib
import json
import time
import zlib
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from conveyor.backends.aws.paging import batch_get, items
from conveyor.backends.events_base import Attempt, EventStore
from conveyor.events.model import (
    Delivery,
    DeliveryPage,
    DeliveryState,
    Endpoint,
    Event,
    EventType,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

    from conveyor.models import Task

Item = dict[str, Any]

OUTBOX_SHARDS = 4
DUE_SHARDS = 4
STREAM_BUCKET = 4096
SEQUENCE_TASKS = 32  # tasks read per outbox shard and round
OUTBOX_INDEX = "outbox-index"
FAN_OUT_BATCH = 24  # a delivery: 3 puts + its chain's mark; 96 of 100 items


def _s(v: str) -> dict[str, str]:
    return {"S": v}


def _n(v: float) -> dict[str, str]:
    return {"N": repr(v) if isinstance(v, float) else str(v)}


def _ts(dt: datetime) -> float:
    return dt.timestamp()


def _dt(v: Item | None) -> datetime | None:
    return None if v is None or "N" not in v else datetime.fromtimestamp(float(v["N"]), UTC)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def reasons(exc: ClientError) -> list[str]:
    """The cancellation reason of each item of a cancelled transaction ("" for none)."""
    got = exc.response.get("CancellationReasons") or []  # type: ignore[typeddict-item]
    return [str((r or {}).get("Code") or "") for r in got]


# -- the outbox (written by the engine) ---------------------------------------------------
def event_type(old: Task | None, new: Task) -> EventType | None:
    """The event a task write makes (the SQL engines' ``tasks_event_*`` triggers' rule):
    a new task is queued; processing is started; back from processing to pending is
    retrying when the attempt counted and queued when it did not (a release); any
    other way to pending is queued; the final states are themselves."""
    if old is None:
        return EventType.QUEUED
    if old.status == new.status:
        return None
    if new.status.value == "processing":
        return EventType.STARTED
    if new.status.value == "pending":
        if old.status.value == "processing" and new.attempts >= old.attempts:
            return EventType.RETRYING
        return EventType.QUEUED
    return EventType(new.status.value)


def event_doc(task: Task, etype: EventType, worker_id: str | None = None) -> str:
    """One outbox event, as the task item's ``outbox`` keeps it (the data the SQL
    engines' triggers write; ``worker_id``: the attempt's, when the write cleared it)."""
    data: dict[str, Any] = {
        "external_id": task.external_id,
        "metadata": task.metadata or {},
        "attempt": task.attempts,
        "worker_id": task.worker_id or worker_id,
        "error": task.error,
        "error_code": task.error_code,
    }
    if etype == EventType.COMPLETED:
        data["outputs"] = [o.model_dump(mode="json") for o in task.outputs]
    if etype == EventType.PROGRESS:
        data["progress"] = task.progress.model_dump(mode="json")
    doc = {
        "id": "evt_" + _token(),
        "type": etype.value,
        "task_id": task.id,
        "kind": task.kind,
        "status": task.status.value,
        "submitted_by": task.submitted_by,
        "at": task.updated_at.timestamp(),
        "data": data,
    }
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def outbox_of(item: Item) -> list[str]:
    return [str(v["S"]) for v in item.get("outbox", {}).get("L", [])]


def outbox_shard(task_id: str) -> str:
    return f"ob#{zlib.crc32(task_id.encode()) % OUTBOX_SHARDS}"


def set_outbox(item: Item, docs: list[str]) -> None:
    """Put ``docs`` in a task item: the list, and the ``outbox-index`` key while the list
    is not empty (a sparse index: only tasks with events to sequence are in it)."""
    item.pop("outbox", None)
    item.pop("outbox_shard", None)
    if docs:
        item["outbox"] = {"L": [_s(d) for d in docs]}
        item["outbox_shard"] = _s(outbox_shard(_str_attr(item, "task_id")))


def _str_attr(item: Item, name: str) -> str:
    return str(item[name]["S"])


def _token() -> str:
    import secrets

    return secrets.token_hex(12)


def read_progress_interval(ddb: DynamoDBClient, aux_table: str) -> float:
    got = ddb.get_item(
        TableName=aux_table,
        Key={"pk": _s("evconfig"), "sk": _s("progress_s")},
        ConsistentRead=True,
    ).get("Item")
    return float(got["value"]["N"]) if got and "value" in got else 0.0


# -- the store ----------------------------------------------------------------------------
def _event(doc: dict[str, Any], seq: int) -> Event:
    return Event(
        id=doc["id"],
        seq=seq,
        type=EventType(doc["type"]),
        task_id=doc["task_id"],
        kind=doc["kind"],
        status=doc["status"],
        submitted_by=doc.get("submitted_by"),
        at=datetime.fromtimestamp(float(doc["at"]), UTC),
        data=doc.get("data") or {},
    )


def _skey(seq: int) -> str:
    return f"{seq:016d}"


def _stream_pk(seq: int) -> str:
    return f"evs#{seq // STREAM_BUCKET}"


def delivery_id(endpoint_id: str, task_id: str, seq: int) -> str:
    return f"dlv_{seq}_{endpoint_id.removeprefix('whk_')}_{task_id}"


def _chain_key(d_id: str) -> tuple[str, str, int] | None:
    """``(endpoint id, task id, event seq)`` of a delivery id, None for a malformed one."""
    parts = d_id.split("_", 3)
    if len(parts) != 4 or parts[0] != "dlv" or not parts[1].isdigit():
        return None
    return f"whk_{parts[2]}", parts[3], int(parts[1])


class DynamoEventStore(EventStore):
    def __init__(
        self, ddb: DynamoDBClient, table: str, aux_table: str, *, owns_client: bool = True
    ) -> None:
        self._ddb = ddb
        self.table = table
        self.aux = aux_table
        self._owns = owns_client

    def close(self) -> None:
        if self._owns:
            self._ddb.close()

    # -- small helpers -----------------------------------------------------------------
    def _get(self, pk: str, sk: str) -> Item | None:
        got: Item | None = self._ddb.get_item(
            TableName=self.aux, Key={"pk": _s(pk), "sk": _s(sk)}, ConsistentRead=True
        ).get("Item")
        return got

    def _query(self, pk: str, *, forward: bool = True, **extra: Any) -> Any:
        kwargs: dict[str, Any] = {
            "TableName": self.aux,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": _s(pk)},
            "ConsistentRead": True,
            "ScanIndexForward": forward,
        }
        for k, v in extra.items():
            if k == "values":
                kwargs["ExpressionAttributeValues"].update(v)
            elif k == "sk":
                kwargs["KeyConditionExpression"] += f" AND {v}"
            else:
                kwargs[k] = v
        yield from items(self._ddb.query, **kwargs)

    def _delete(self, pk: str, sk: str) -> None:
        self._ddb.delete_item(TableName=self.aux, Key={"pk": _s(pk), "sk": _s(sk)})

    def _counter(self, pk: str, sk: str) -> int:
        got = self._get(pk, sk)
        return int(got["seq"]["N"]) if got and "seq" in got else 0

    # -- settings ----------------------------------------------------------------------
    def set_progress_interval(self, seconds: float) -> None:
        self._ddb.put_item(
            TableName=self.aux,
            Item={
                "pk": _s("evconfig"),
                "sk": _s("progress_s"),
                "value": _n(max(0.0, float(seconds))),
            },
        )

    # -- the stream --------------------------------------------------------------------
    def sequence(self) -> int:
        total = 0
        for _ in range(200):
            if total >= 5000:
                break
            head = self._get("evhead", "evhead")
            base = int(head["seq"]["N"]) if head else 0
            ids: list[str] = []
            for shard in range(OUTBOX_SHARDS):
                resp = self._ddb.query(
                    TableName=self.table,
                    IndexName=OUTBOX_INDEX,
                    KeyConditionExpression="outbox_shard = :s",
                    ExpressionAttributeValues={":s": _s(f"ob#{shard}")},
                    Limit=SEQUENCE_TASKS,
                )
                ids.extend(str(i["task_id"]["S"]) for i in resp.get("Items", []))
            # the index only finds them (it may lag): the items, read consistently, say
            work = [(i, outbox_of(i)) for i in self._batch_get_tasks(ids)]
            work = [(i, docs) for i, docs in work if docs]
            if not work:
                return total
            work.sort(key=lambda w: (json.loads(w[1][0])["at"], w[0]["task_id"]["S"]))
            chosen: list[tuple[Item, list[str], int]] = []
            room = 100 - 1  # evhead's update
            for item, docs in work:
                take = min(len(docs), room - 1)  # the task's update + one put per event
                if take <= 0:
                    break
                chosen.append((item, docs, take))
                room -= 1 + take
            ops: list[Any] = []
            for item, docs, take in chosen:
                drained = take == len(docs)
                removes = (
                    "outbox, outbox_shard"
                    if drained
                    else ", ".join(f"outbox[{j}]" for j in range(take))
                )
                ops.append(
                    {
                        "Update": {
                            "TableName": self.table,
                            "Key": {"task_id": item["task_id"]},
                            # ver moves: a task write based on the old outbox fails and
                            # reads again, so it cannot put back what was sequenced here
                            "UpdateExpression": f"REMOVE {removes} SET ver = ver + :one",
                            "ConditionExpression": "ver = :v",
                            "ExpressionAttributeValues": {":one": _n(1), ":v": item["ver"]},
                        }
                    }
                )
            ordered = _interleave([docs[:take] for _, docs, take in chosen])
            for i, raw in enumerate(ordered, start=1):
                seq = base + i
                doc = json.loads(raw)
                stream_item: Item = {
                    "pk": _s(_stream_pk(seq)),
                    "sk": _s(_skey(seq)),
                    "ev": _s(raw),
                    "task_id": _s(doc["task_id"]),
                    "kind": _s(doc["kind"]),
                    "status": _s(doc["status"]),
                    "at": _n(float(doc["at"])),
                }
                if doc.get("submitted_by") is not None:
                    stream_item["submitted_by"] = _s(doc["submitted_by"])
                ops.append(
                    {
                        "Put": {
                            "TableName": self.aux,
                            "Item": stream_item,
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    }
                )
            top = base + len(ordered)
            if head is None:
                head_op: Any = {
                    "Put": {
                        "TableName": self.aux,
                        "Item": {"pk": _s("evhead"), "sk": _s("evhead"), "seq": _n(top)},
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                }
            else:
                head_op = {
                    "Update": {
                        "TableName": self.aux,
                        "Key": {"pk": _s("evhead"), "sk": _s("evhead")},
                        "UpdateExpression": "SET seq = :new",
                        "ConditionExpression": "seq = :old",
                        "ExpressionAttributeValues": {":new": _n(top), ":old": _n(base)},
                    }
                }
            try:
                self._ddb.transact_write_items(TransactItems=[head_op, *ops])
            except ClientError as exc:
                if _code(exc) in ("TransactionCanceledException", "TransactionConflict"):
                    continue  # a task was written meanwhile, or another sequencer ran: again
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                if status < 500:
                    raise
                # the server failed (botocore's retries ran out; moto fails a transaction
                # that overlaps other writes): nothing was written, try again shortly
                time.sleep(0.05)
                continue
            total += len(ordered)
        return total

    def _batch_get_tasks(self, ids: list[str]) -> list[Item]:
        return batch_get(self._ddb, self.table, [{"task_id": _s(t)} for t in sorted(set(ids))])

    def last_seq(self) -> int:
        return self._counter("evhead", "evhead")

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
        limit = max(1, min(int(limit), 1000))
        head = self.last_seq()  # never past it: see the module docs
        seq = max(0, int(seq))
        if seq >= head:
            return []
        filters: list[str] = []
        values: Item = {}
        names: dict[str, str] = {}
        for attr, wanted in (("kind", kinds), ("status", statuses)):
            if wanted:
                marks = [f":{attr}{i}" for i in range(len(wanted))]
                names[f"#{attr}"] = attr
                filters.append(f"#{attr} IN ({', '.join(marks)})")
                values.update({m: _s(v) for m, v in zip(marks, wanted, strict=True)})
        if submitted_by is not None:
            filters.append("submitted_by = :sb")
            values[":sb"] = _s(submitted_by)
        if task_id is not None:
            filters.append("task_id = :tid")
            values[":tid"] = _s(task_id)
        out: list[Event] = []
        bucket = (seq + 1) // STREAM_BUCKET
        while len(out) < limit and bucket <= head // STREAM_BUCKET:
            extra: dict[str, Any] = {
                "sk": "sk BETWEEN :lo AND :hi",
                "values": {":lo": _s(_skey(seq + 1)), ":hi": _s(_skey(head)), **values},
            }
            if filters:
                extra["FilterExpression"] = " AND ".join(filters)
            if names:
                extra["ExpressionAttributeNames"] = names
            for item in self._query(f"evs#{bucket}", **extra):
                out.append(_event(json.loads(item["ev"]["S"]), int(item["sk"]["S"])))
                if len(out) >= limit:
                    break
            bucket += 1
        return out

    def events_by_seq(self, seqs: list[int]) -> dict[int, Event]:
        out: dict[int, Event] = {}
        keys = [{"pk": _s(_stream_pk(s)), "sk": _s(_skey(s))} for s in sorted(set(seqs))]
        for item in self._batch_get(keys):
            seq = int(item["sk"]["S"])
            out[seq] = _event(json.loads(item["ev"]["S"]), seq)
        return out

    def _batch_get(self, keys: list[Item]) -> list[Item]:
        return batch_get(self._ddb, self.aux, keys)

    # -- fan-out -----------------------------------------------------------------------
    def unfanned(self, limit: int = 500) -> list[Event]:
        return self.events_after(self._counter("evcursor", "fanout"), limit=limit)

    def fan_out(self, events: list[Event], deliveries: list[Delivery]) -> None:
        if not events:
            return
        todo = sorted(deliveries, key=lambda d: d.event_seq)  # a chain's older ones first
        while todo:
            batch, todo = todo[:FAN_OUT_BATCH], todo[FAN_OUT_BATCH:]
            self._put_deliveries(batch)
        top = max(e.seq for e in events)
        try:
            self._ddb.put_item(
                TableName=self.aux,
                Item={"pk": _s("evcursor"), "sk": _s("fanout"), "seq": _n(top)},
                ConditionExpression="attribute_not_exists(seq) OR seq < :top",
                ExpressionAttributeValues={":top": _n(top)},
            )
        except ClientError as exc:
            if _code(exc) != "ConditionalCheckFailedException":
                raise

    def _put_deliveries(self, batch: list[Delivery]) -> None:
        """Put ``batch`` (those already there skipped) in one transaction."""
        while batch:
            ops: list[Any] = []
            chains: set[tuple[str, str]] = set()
            first_op: list[int] = []
            for d in batch:
                first_op.append(len(ops))
                ops.extend(self._delivery_puts(d))
                chain = (d.endpoint_id, d.task_id)
                if chain not in chains:
                    chains.add(chain)
                    ops.append(self._mark_due(*chain))
            try:
                self._ddb.transact_write_items(TransactItems=ops)
                return
            except ClientError as exc:
                if _code(exc) != "TransactionCanceledException":
                    raise
                why = reasons(exc)
                there = {
                    i
                    for i, at in enumerate(first_op)
                    if at < len(why) and why[at] == "ConditionalCheckFailed"
                }
                if not there:
                    raise
                batch = [d for i, d in enumerate(batch) if i not in there]

    def _delivery_puts(self, d: Delivery) -> list[Any]:
        d_id = delivery_id(d.endpoint_id, d.task_id, d.event_seq)
        item = self._delivery_item(d.model_copy(update={"id": d_id}))
        sk = _skey(d.event_seq)
        return [
            {
                "Put": {
                    "TableName": self.aux,
                    "Item": item,
                    "ConditionExpression": "attribute_not_exists(pk)",
                }
            },
            {
                "Put": {
                    "TableName": self.aux,
                    "Item": {"pk": _s(f"dlvep#{d.endpoint_id}"), "sk": _s(f"{sk}#{d_id}")},
                }
            },
            {
                "Put": {
                    "TableName": self.aux,
                    "Item": {"pk": _s(f"dlvtask#{d.task_id}"), "sk": _s(f"{sk}#{d_id}")},
                }
            },
        ]

    def _mark_due(self, endpoint_id: str, task_id: str) -> Any:
        return {
            "Update": {
                "TableName": self.aux,
                "Key": self._due_key(endpoint_id, task_id),
                "UpdateExpression": "ADD #n :one",
                "ExpressionAttributeNames": {"#n": "n"},
                "ExpressionAttributeValues": {":one": _n(1)},
            }
        }

    @staticmethod
    def _due_key(endpoint_id: str, task_id: str) -> Item:
        chain = f"{endpoint_id}#{task_id}"
        shard = zlib.crc32(chain.encode()) % DUE_SHARDS
        return {"pk": _s(f"dlvdue#{shard}"), "sk": _s(chain)}

    @staticmethod
    def _chain_pk(endpoint_id: str, task_id: str) -> str:
        return f"dlv#{endpoint_id}#{task_id}"

    def _delivery_item(self, d: Delivery) -> Item:
        item: Item = {
            "pk": _s(self._chain_pk(d.endpoint_id, d.task_id)),
            "sk": _s(_skey(d.event_seq)),
            "id": _s(d.id),
            "event_id": _s(d.event_id),
            "event_seq": _n(d.event_seq),
            "event_type": _s(d.event_type),
            "endpoint_id": _s(d.endpoint_id),
            "task_id": _s(d.task_id),
            "state": _s(d.state.value),
            "attempts": _n(d.attempts),
            "created_at": _n(_ts(d.created_at)),
        }
        for name, value in (("next_at", d.next_at), ("last_at", d.last_at)):
            if value is not None:
                item[name] = _n(_ts(value))
        if d.last_status is not None:
            item["last_status"] = _n(d.last_status)
        if d.last_error is not None:
            item["last_error"] = _s(d.last_error)
        if d.last_latency_ms is not None:
            item["last_latency_ms"] = _n(float(d.last_latency_ms))
        if d.last_body is not None:
            item["last_body"] = _s(d.last_body)
        return item

    @staticmethod
    def _delivery(item: Item) -> Delivery:
        created = _dt(item["created_at"])
        assert created is not None
        return Delivery(
            id=item["id"]["S"],
            event_id=item["event_id"]["S"],
            event_seq=int(item["event_seq"]["N"]),
            event_type=item["event_type"]["S"],
            endpoint_id=item["endpoint_id"]["S"],
            task_id=item["task_id"]["S"],
            state=DeliveryState(item["state"]["S"]),
            attempts=int(item["attempts"]["N"]),
            created_at=created,
            next_at=_dt(item.get("next_at")),
            last_at=_dt(item.get("last_at")),
            last_status=int(item["last_status"]["N"]) if "last_status" in item else None,
            last_error=item["last_error"]["S"] if "last_error" in item else None,
            last_latency_ms=(
                float(item["last_latency_ms"]["N"]) if "last_latency_ms" in item else None
            ),
            last_body=item["last_body"]["S"] if "last_body" in item else None,
        )

    # -- endpoints ---------------------------------------------------------------------
    def _endpoint_item(self, ep: Endpoint, pk: str, sk: str) -> Item:
        doc = ep.model_dump(mode="json")
        doc["secret"] = ep.secret  # excluded from dumps: kept here, shown nowhere
        return {"pk": _s(pk), "sk": _s(sk), "ep": _s(json.dumps(doc))}

    @staticmethod
    def _endpoint(item: Item) -> Endpoint:
        return Endpoint.model_validate_json(item["ep"]["S"])

    def add_endpoint(self, endpoint: Endpoint) -> None:
        listed = f"whktask#{endpoint.task_id}" if endpoint.task_id is not None else "whk"
        self._ddb.transact_write_items(
            TransactItems=[
                {
                    "Put": {
                        "TableName": self.aux,
                        "Item": self._endpoint_item(endpoint, f"whkid#{endpoint.id}", "whk"),
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                },
                {
                    "Put": {
                        "TableName": self.aux,
                        "Item": self._endpoint_item(endpoint, listed, endpoint.id),
                    }
                },
            ]
        )

    def get_endpoint(self, endpoint_id: str) -> Endpoint | None:
        got = self._get(f"whkid#{endpoint_id}", "whk")
        return None if got is None else self._endpoint(got)

    def endpoints(self, *, task_ids: list[str] | None = None) -> list[Endpoint]:
        out = [self._endpoint(i) for i in self._query("whk")]
        for task_id in sorted(set(task_ids or [])):
            out.extend(self._endpoint(i) for i in self._query(f"whktask#{task_id}"))
        return sorted(out, key=lambda e: (e.created_at, e.id))

    def delete_endpoint(self, endpoint_id: str) -> bool:
        got = self._get(f"whkid#{endpoint_id}", "whk")
        if got is None:
            return False
        ep = self._endpoint(got)
        listed = f"whktask#{ep.task_id}" if ep.task_id is not None else "whk"
        self._delete(listed, endpoint_id)
        self._delete(f"whkid#{endpoint_id}", "whk")  # the dispatcher gives up on it now
        for pointer in list(self._query(f"dlvep#{endpoint_id}")):
            key = _chain_key(pointer["sk"]["S"].split("#", 1)[1])
            if key is not None:
                self._drop_delivery(*key)
        return True

    def _drop_delivery(self, endpoint_id: str, task_id: str, seq: int) -> None:
        d_id = delivery_id(endpoint_id, task_id, seq)
        self._delete(self._chain_pk(endpoint_id, task_id), _skey(seq))
        self._delete(f"dlvtask#{task_id}", f"{_skey(seq)}#{d_id}")
        self._delete(f"dlvep#{endpoint_id}", f"{_skey(seq)}#{d_id}")

    # -- deliveries --------------------------------------------------------------------
    def _chain_head(self, endpoint_id: str, task_id: str) -> Item | None:
        """The oldest pending delivery of a chain (consistent)."""
        for item in self._query(
            self._chain_pk(endpoint_id, task_id),
            FilterExpression="#st = :p",
            ExpressionAttributeNames={"#st": "state"},
            values={":p": _s("pending")},
        ):
            return item  # type: ignore[no-any-return]
        return None

    def claim_deliveries(self, now: datetime, lease_s: float, limit: int) -> list[Delivery]:
        until = now + timedelta(seconds=lease_s)
        heads: list[Item] = []
        for shard in range(DUE_SHARDS):
            for mark in list(self._query(f"dlvdue#{shard}")):
                endpoint_id, _, task_id = mark["sk"]["S"].partition("#")
                head = self._chain_head(endpoint_id, task_id)
                if head is None:  # the chain is done: unmark it, unless one was just added
                    with contextlib.suppress(ClientError):
                        self._ddb.delete_item(
                            TableName=self.aux,
                            Key={"pk": mark["pk"], "sk": mark["sk"]},
                            ConditionExpression="#n = :n",
                            ExpressionAttributeNames={"#n": "n"},
                            ExpressionAttributeValues={":n": mark["n"]},
                        )
                    continue
                if "next_at" in head and float(head["next_at"]["N"]) <= now.timestamp():
                    heads.append(head)
        heads.sort(key=lambda i: float(i["next_at"]["N"]))
        claimed: list[Delivery] = []
        for head in heads:
            if len(claimed) >= max(1, int(limit)):
                break
            try:
                got = self._ddb.update_item(
                    TableName=self.aux,
                    Key={"pk": head["pk"], "sk": head["sk"]},
                    UpdateExpression="SET next_at = :until",
                    ConditionExpression="#st = :p AND next_at = :seen",
                    ExpressionAttributeNames={"#st": "state"},
                    ExpressionAttributeValues={
                        ":until": _n(_ts(until)),
                        ":p": _s("pending"),
                        ":seen": head["next_at"],
                    },
                    ReturnValues="ALL_NEW",
                )
            except ClientError as exc:
                if _code(exc) == "ConditionalCheckFailedException":
                    continue  # another dispatcher took it
                raise
            claimed.append(self._delivery(got["Attributes"]))
        return sorted(claimed, key=lambda d: d.event_seq)

    def record_attempts(self, attempts: list[Attempt]) -> None:
        for a in attempts:
            key = _chain_key(a.delivery_id)
            if key is None:
                continue
            endpoint_id, task_id, seq = key
            sets = ["#st = :st", "attempts = attempts + :one", "last_at = :at"]
            removes: list[str] = []
            values: Item = {":st": _s(a.state.value), ":one": _n(1), ":at": _n(_ts(a.at))}
            optional: list[tuple[str, Item | None]] = [
                ("next_at", _n(_ts(a.next_at)) if a.next_at is not None else None),
                ("last_status", _n(a.status) if a.status is not None else None),
                ("last_error", _s(a.error) if a.error is not None else None),
                ("last_latency_ms", _n(float(a.latency_ms)) if a.latency_ms is not None else None),
                ("last_body", _s(a.body) if a.body is not None else None),
            ]
            for name, value in optional:
                if value is None:
                    removes.append(name)
                else:
                    sets.append(f"{name} = :{name}")
                    values[f":{name}"] = value
            expr = "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else "")
            with contextlib.suppress(self._ddb.exceptions.ConditionalCheckFailedException):
                self._ddb.update_item(
                    TableName=self.aux,
                    Key={"pk": _s(self._chain_pk(endpoint_id, task_id)), "sk": _s(_skey(seq))},
                    UpdateExpression=expr,
                    ConditionExpression="attribute_exists(pk)",  # not a deleted endpoint's
                    ExpressionAttributeNames={"#st": "state"},
                    ExpressionAttributeValues=values,
                )

    def get_delivery(self, delivery_id: str) -> Delivery | None:
        key = _chain_key(delivery_id)
        if key is None:
            return None
        got = self._get(self._chain_pk(key[0], key[1]), _skey(key[2]))
        return None if got is None else self._delivery(got)

    def deliveries(
        self,
        *,
        endpoint_id: str | None = None,
        task_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> DeliveryPage:
        limit = max(1, min(int(limit), 500))
        forward = task_id is not None  # a task's: oldest first; an endpoint's: newest first
        extra: dict[str, Any] = {}
        if cursor:
            extra = {"sk": f"sk {'>' if forward else '<'} :cur", "values": {":cur": _s(cursor)}}
        if endpoint_id is not None and task_id is not None:
            items = list(
                self._limited(self._query(self._chain_pk(endpoint_id, task_id), **extra), limit)
            )
            rows = [self._delivery(i) for i in items]
            last_sk = items[limit - 1]["sk"]["S"] if len(items) > limit else None
        else:
            pk = f"dlvtask#{task_id}" if task_id is not None else f"dlvep#{endpoint_id}"
            if task_id is None and endpoint_id is None:
                return self._all_deliveries(limit)
            pointers = list(self._limited(self._query(pk, forward=forward, **extra), limit))
            ids = [p["sk"]["S"].split("#", 1)[1] for p in pointers[:limit]]
            by_id = {d.id: d for d in self._deliveries_by_id(ids)}
            rows = [by_id[i] for i in ids if i in by_id]
            last_sk = pointers[limit - 1]["sk"]["S"] if len(pointers) > limit else None
        return DeliveryPage(items=rows[:limit], next_cursor=last_sk)

    @staticmethod
    def _limited(items: Any, limit: int) -> Any:
        for n, item in enumerate(items):
            if n > limit:
                return
            yield item

    def _deliveries_by_id(self, ids: list[str]) -> list[Delivery]:
        keys = []
        for d_id in ids:
            key = _chain_key(d_id)
            if key is not None:
                keys.append({"pk": _s(self._chain_pk(key[0], key[1])), "sk": _s(_skey(key[2]))})
        return [self._delivery(i) for i in self._batch_get(keys)]

    def _all_deliveries(self, limit: int) -> DeliveryPage:
        """Every delivery, newest event first: a scan (no face asks for it)."""
        found: list[Delivery] = []
        kwargs: dict[str, Any] = {
            "TableName": self.aux,
            "FilterExpression": "begins_with(pk, :p)",
            "ExpressionAttributeValues": {":p": _s("dlv#")},
            "ConsistentRead": True,
        }
        found.extend(self._delivery(i) for i in items(self._ddb.scan, **kwargs))
        found.sort(key=lambda d: (d.event_seq, d.id), reverse=True)
        return DeliveryPage(items=found[:limit])

    def redeliver(self, delivery_id: str, now: datetime) -> Delivery | None:
        key = _chain_key(delivery_id)
        if key is None:
            return None
        endpoint_id, task_id, seq = key
        try:
            got = self._ddb.transact_write_items(
                TransactItems=[
                    {
                        "Update": {
                            "TableName": self.aux,
                            "Key": {
                                "pk": _s(self._chain_pk(endpoint_id, task_id)),
                                "sk": _s(_skey(seq)),
                            },
                            "UpdateExpression": "SET #st = :p, next_at = :now",
                            "ConditionExpression": "attribute_exists(pk)",
                            "ExpressionAttributeNames": {"#st": "state"},
                            "ExpressionAttributeValues": {
                                ":p": _s("pending"),
                                ":now": _n(_ts(now)),
                            },
                        }
                    },
                    self._mark_due(endpoint_id, task_id),
                ]
            )
        except ClientError as exc:
            if _code(exc) == "TransactionCanceledException":
                return None
            raise
        del got
        return self.get_delivery(delivery_id)

    def prune(self, before: datetime) -> int:
        """Finished deliveries created before ``before``, then the fanned-out events
        before it that no pending delivery needs, never the newest.  A task's own
        webhook stays (it is small; deleting its task does not happen here)."""
        n = 0
        cut = _ts(before)
        pending: set[int] = set()
        kwargs: dict[str, Any] = {
            "TableName": self.aux,
            "FilterExpression": "begins_with(pk, :p)",
            "ExpressionAttributeValues": {":p": _s("dlv#")},
            "ConsistentRead": True,
        }
        for item in items(self._ddb.scan, **kwargs):
            d = self._delivery(item)
            if d.state == DeliveryState.PENDING:
                pending.add(d.event_seq)
            elif _ts(d.created_at) < cut:
                self._drop_delivery(d.endpoint_id, d.task_id, d.event_seq)
                n += 1
        head = self.last_seq()
        upto = min(self._counter("evcursor", "fanout"), head - 1)
        for bucket in range(0 if upto < 1 else upto // STREAM_BUCKET + 1):
            for item in list(
                self._query(
                    f"evs#{bucket}",
                    sk="sk <= :hi",
                    values={":hi": _s(_skey(upto)), ":cut": _n(cut)},
                    FilterExpression="#at < :cut",
                    ExpressionAttributeNames={"#at": "at"},
                )
            ):
                if int(item["sk"]["S"]) not in pending:
                    self._delete(item["pk"]["S"], item["sk"]["S"])
                    n += 1
        return n


def _interleave(groups: list[list[str]]) -> list[str]:
    """Events of several tasks (each group one task's, oldest first) in the order to
    sequence them: by time, but each task's always in its own order (a task's events
    take the places their times gave, in the group's order)."""
    flat = [
        (json.loads(doc)["at"], g, j) for g, docs in enumerate(groups) for j, doc in enumerate(docs)
    ]
    flat.sort()
    out: list[str] = []
    nxt = [0] * len(groups)
    for _, g, _j in flat:
        out.append(groups[g][nxt[g]])
        nxt[g] += 1
    return out
