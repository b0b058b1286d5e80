"""The AWS engine's tasks: SQS delivers, DynamoDB is the record of truth.

URL: ``aws://?queue_url=…&table=…&region=…`` (URL-encode the values).  Optional:
``endpoint_url=`` (moto, LocalStack), ``shards=`` (status index shards, default
4; every process must use the same value), ``claim_wait=`` (seconds a claim
long-polls when the queue looks empty, default 0: real SQS short polls sample
a subset of servers and may miss a message, which costs one worker loop since
``wait_for_work`` long-polls; set 1 to have claims query every server),
``aux_table=`` (default ``<table>-aux``), ``dlq_url=`` (default: read from the
queue's redrive policy).  Credentials
come from the usual boto3 chain (environment, profile, instance role).
Resources are created by :func:`conveyor.backends.aws.resources.ensure_resources`.

Record.  One DynamoDB item per task (``task_id``) holds the whole task as a
JSON document (``doc``) plus the attributes that keys, indexes and
conditions need: ``status``, ``status_shard``, ``date_partition``,
``created_key``, ``lease_token``, ``lease_expires``, ``dispatch``, ``ver``.
Every write is conditional on ``ver`` (optimistic concurrency, bumped by
every write), so two processes never both win a transition; the fenced
writes (progress, complete, fail, release, heartbeat) are additionally
conditional on ``lease_token`` and ``status = processing``.

Status sharding.  ``status_shard = "<status>#<crc32(id) % shards>"``: one hot
status (a backlog of pending tasks) is spread over ``shards`` partitions of
``status-index``; listing by status queries every shard of that status and
merges them newest first.  The GSI range key is ``created_key`` =
``<created_at ISO-8601 UTC µs>#<id>``, unique and totally ordered, so the
opaque cursor is simply the last ``created_key`` returned and works for one
shard or many alike.

Delivery.  Every transition to ``pending`` (submit, retry back-off, release,
reap, retry) draws a fresh ``dispatch`` token and sends one SQS message
``{task, dispatch}``.  The record is written first with ``unsent = true``;
after the send succeeds the flag is cleared.  If the send fails the task is
still recorded and ``reap()`` re-sends for pending tasks left ``unsent``.
A message whose task is no longer pending with that dispatch (cancelled,
cleared, already claimed, superseded) is stale and deleted on receipt, so
cancel and ``clear_pending`` only write DynamoDB (no ``PurgeQueue``, which
would drop other tasks' messages too).

Claim receives up to 10 messages (short poll, visibility = the lease rounded
up to whole seconds), reads their records, takes the best ``capacity`` of the
eligible ones with a conditional write and hands every other message back at
once (visibility 0); a message whose retry back-off has not passed is hidden
until it has.  SQS cannot filter what it delivers, so ``max_gpus`` is applied
here too: a message whose task needs more GPUs than the worker has free
(the record's ``gpus``, also a DynamoDB attribute) is handed back at once
like one of another kind, nothing is written, so no attempt is counted; it
costs an SQS receive, counted towards the dead-letter threshold (below).
Heartbeats extend the DynamoDB lease and the message's visibility
(``ChangeMessageVisibility``); completion deletes the message.

Priority.  SQS has no priority: a claim picks the highest priority, then the
oldest id, among the messages of one receive batch (up to 10, a few batches
when the capacity is larger), and returns the others.  Ordering is therefore
exact for small backlogs and approximate (best of a sample) for large ones;
deployments that need strict priority bands should use one queue per band.

Leases and back-off.  Lease expiry and ``not_before`` live in DynamoDB with
sub-second precision; SQS only sees whole seconds (visibility timeouts,
``DelaySeconds`` <= 900), so a redelivery may come up to a second late.
``reap()`` requeues expired leases from the ``processing`` shards of
``status-index`` (conditional on ``ver`` and the expiry, so concurrent reapers
touch each lease once).

Dead letters.  The queue's redrive policy moves a message to ``<queue>-dlq``
after ``maxReceiveCount`` receives; ``reap()`` drains the DLQ and mirrors each
message as a ``failed`` task (``error_code = dead_lettered``) with the reason.
SQS counts every receive, including a claim that passes a message over and
``wait_for_work``'s peeks, so the redrive threshold cannot be ``max_attempts``
(a healthy task would be dead-lettered by busy idle workers): it is a backstop
against poison messages (default 1000 receives, ``ensure_resources(max_receives=)``)
and ``max_attempts`` is enforced exactly on the record (``attempts``), by
``fail`` and ``reap``.  A task that uses up its attempts is put in the DLQ
too (a ``final`` message with the reason), so the DLQ holds every task that
gave up, whichever way; messages stay there for inspection and redrive
(see ``_drain_dlq``).

Waiting.  ``wait_for_work`` long-polls the queue (``WaitTimeSeconds``) with a
zero visibility timeout, i.e. a peek; it returns as soon as a message is
visible.  When the previous claim found only messages it could not take
(other kinds, back-off), it sleeps instead of returning at once, so a worker
never spins.

Indexes are eventually consistent on real DynamoDB: ``list`` and ``counts``
may lag a write by a fraction of a second (``get`` reads consistently).
"""

from __future__ import annotations

import contextlib
import heapq
import json
import math
import secrets
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlparse

from botocore.exceptions import ClientError

from conveyor.auth.store import AuthStore
from conveyor.backends import rules
from conveyor.backends.aws.events import (
    event_doc,
    event_type,
    outbox_of,
    read_progress_interval,
    reasons,
    set_outbox,
)
from conveyor.backends.aws.paging import batch_get, items
from conveyor.backends.aws.resources import dynamodb_client, ensure_resources, sqs_client
from conveyor.backends.base import Backend
from conveyor.backends.cursor import decode_cursor, encode_cursor
from conveyor.errors import Conflict, InvalidRequest, LeaseLost, TaskNotFound
from conveyor.events.model import EventType
from conveyor.models import (
    Attempt,
    ClaimedTask,
    HeartbeatResult,
    Lease,
    LogLine,
    OutputFile,
    Page,
    Progress,
    QueueCounts,
    Task,
    TaskStatus,
    WorkerInfo,
    date_partition,
    gpus_in_params,
    utcnow,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_sqs import SQSClient

    from conveyor.backends.events_base import EventStore

Item = dict[str, Any]

# a transaction's cancellation reasons that mean another writer got there first
_LOST = frozenset({"ConditionalCheckFailed", "TransactionConflict"})

DEFAULT_SHARDS = 4
OUTBOX_KEEP = 50  # unsequenced events in a task item past which progress ones coalesce
MAX_DELAY_S = 900
MAX_VISIBILITY_S = 43200
_WORKER_TTL_S = 7 * 24 * 3600


# -- attribute helpers -----------------------------------------------------------
def _s(v: str) -> dict[str, str]:
    return {"S": v}


def _n(v: float) -> dict[str, str]:
    return {"N": repr(v) if isinstance(v, float) else str(v)}


def _num(item: Item, name: str) -> float | None:
    v = item.get(name)
    return None if v is None or "N" not in v else float(v["N"])


def _str(item: Item, name: str) -> str | None:
    v = item.get(name)
    return None if v is None or "S" not in v else str(v["S"])


def _created_key(task: Task) -> str:
    return _key_of(task.created_at, task.id)


def _key_of(created_at: datetime, task_id: str) -> str:
    """The ``created_key`` of the indexes: unique and ordered like ``(created_at, id)``."""
    return f"{created_at.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%S.%fZ')}#{task_id}"


def _at(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _is(exc: ClientError, *codes: str) -> bool:
    return exc.response.get("Error", {}).get("Code") in codes


class _State:
    """A task record as read from DynamoDB: the task plus engine bookkeeping."""

    def __init__(self, item: Item) -> None:
        self.task = Task.model_validate_json(item["doc"]["S"])
        if "gpus" not in self.task.model_fields_set:  # written before ``gpus`` was a field
            self.task.gpus = gpus_in_params(self.task.kind, self.task.params)
        self.ver = int(_num(item, "ver") or 0)
        self.lease_token = _str(item, "lease_token")
        self.lease_expires = _num(item, "lease_expires")
        self.dispatch = _str(item, "dispatch")
        self.receipt = _str(item, "receipt")
        self.unsent = bool(item.get("unsent", {}).get("BOOL", False))
        # when the task's last progress event was written (they are throttled)
        self.progress_ev_at = _num(item, "ev_progress_at")
        # its events not yet sequenced (aws/events.py), oldest first
        self.outbox = outbox_of(item)


class AWSBackend(Backend):
    ensure_resources = staticmethod(ensure_resources)
    # a pending record still ``unsent`` after this long is sent again by reap()
    resend_grace_s: float = 10.0

    def __init__(
        self,
        *,
        queue_url: str,
        table: str,
        region: str,
        endpoint_url: str | None = None,
        aux_table: str | None = None,
        dlq_url: str | None = None,
        shards: int = DEFAULT_SHARDS,
        claim_wait_s: int = 0,
        backoff_base: float | None = None,
    ) -> None:
        if not queue_url or not table or not region:
            raise InvalidRequest("aws backend needs queue_url, table and region")
        self.queue_url = queue_url
        self.table = table
        self.aux_table = aux_table or f"{table}-aux"
        self.shards = max(1, int(shards))
        self.claim_wait_s = max(0, min(20, int(claim_wait_s)))
        if backoff_base is not None:
            self.backoff_base = backoff_base
        self._ddb: DynamoDBClient = dynamodb_client(region, endpoint_url)
        self._sqs: SQSClient = sqs_client(region, endpoint_url)
        self._dlq_url = dlq_url
        self.dlq_interval_s = 30.0
        self._dlq_last = -math.inf
        self._dlq_seen: set[str] = set()
        self._dlq_checked = dlq_url is not None
        self._local = threading.local()
        self._region = region
        self._endpoint_url = endpoint_url

    def _open_auth_store(self) -> AuthStore:
        from conveyor.backends.aws.auth import DynamoAuthStore

        return DynamoAuthStore(self._ddb, self.aux_table)

    def open_event_store(self) -> EventStore:
        """The events' store (``aws/events.py``), in the auxiliary table, on a client of
        its own (the dispatcher's thread is not the engine's)."""
        from conveyor.backends.aws.events import DynamoEventStore

        # the sequencer retries a failed transaction itself, at once: botocore's growing
        # back-off would hold every event for seconds
        client = dynamodb_client(self._region, self._endpoint_url, max_attempts=2)
        return DynamoEventStore(client, self.table, self.aux_table)

    @classmethod
    def from_url(cls, url: str) -> AWSBackend:
        parsed = urlparse(url)
        q = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        missing = [k for k in ("queue_url", "table", "region") if not q.get(k)]
        if missing:
            raise InvalidRequest(
                f"aws backend URL is missing {', '.join(missing)}: expected "
                "aws://?queue_url=https://sqs…&table=NAME&region=REGION"
            )
        try:
            shards = int(q.get("shards", DEFAULT_SHARDS))
            claim_wait_s = int(q.get("claim_wait", 0))
        except ValueError:
            raise InvalidRequest(
                "aws backend URL: shards and claim_wait must be integers"
            ) from None
        return cls(
            queue_url=q["queue_url"],
            table=q["table"],
            region=q["region"],
            endpoint_url=q.get("endpoint_url") or None,
            aux_table=q.get("aux_table") or None,
            dlq_url=q.get("dlq_url") or None,
            shards=shards,
            claim_wait_s=claim_wait_s,
        )

    # -- record helpers ----------------------------------------------------------
    def _shard(self, task_id: str) -> int:
        return zlib.crc32(task_id.encode()) % self.shards

    def _shard_keys(self, status: TaskStatus) -> list[str]:
        return [f"{status.value}#{i}" for i in range(self.shards)]

    def _item(
        self,
        task: Task,
        *,
        ver: int,
        lease_token: str | None = None,
        lease_expires: float | None = None,
        dispatch: str | None = None,
        receipt: str | None = None,
        unsent: bool = False,
        progress_ev_at: float | None = None,
    ) -> Item:
        item: Item = {
            "task_id": _s(task.id),
            "doc": _s(task.model_dump_json(exclude={"waiting_reason"})),
            "ver": _n(ver),
            "status": _s(task.status.value),
            "status_shard": _s(f"{task.status.value}#{self._shard(task.id)}"),
            "date_partition": _s(task.date_partition),
            "created_key": _s(_created_key(task)),
            "kind": _s(task.kind),
            "priority": _n(task.priority),
            "gpus": _n(task.gpus),
            "key_lc": _s(task.input.key.lower() if task.input else ""),
            "updated_at": _n(task.updated_at.timestamp()),
        }
        if task.external_id is not None:  # list(external_id=...) filters on it
            item["external_id"] = _s(task.external_id)
        if task.not_before is not None:
            item["not_before"] = _n(task.not_before.timestamp())
        if task.finished_at is not None:
            item["finished_at"] = _n(task.finished_at.timestamp())
        if lease_token is not None:
            item["lease_token"] = _s(lease_token)
        if lease_expires is not None:
            item["lease_expires"] = _n(lease_expires)
        if dispatch is not None:
            item["dispatch"] = _s(dispatch)
        if receipt is not None:
            item["receipt"] = _s(receipt)
        if unsent:
            item["unsent"] = {"BOOL": True}
        if progress_ev_at is not None:
            item["ev_progress_at"] = _n(progress_ev_at)
        return item

    def _read(self, task_id: str) -> _State | None:
        got = self._ddb.get_item(
            TableName=self.table, Key={"task_id": _s(task_id)}, ConsistentRead=True
        )
        item = got.get("Item")
        return None if item is None else _State(item)

    def _with_event(self, old: _State | None, item: Item) -> Item:
        """``item`` with its outbox (``aws/events.py``): the events of ``old`` not yet
        sequenced, and the event that writing ``item`` over ``old`` makes, if any (a
        state change, or a progress update that moved the task's ``ev_progress_at``:
        ``progress`` does when progress events are due).  The item is written whole in
        one conditional put, so the state change and its event commit together."""
        new = _State(item)
        etype = event_type(None if old is None else old.task, new.task)
        if (
            etype is None
            and old is not None
            and new.progress_ev_at is not None
            and new.progress_ev_at != old.progress_ev_at
        ):
            etype = EventType.PROGRESS
        kept = [] if old is None else list(old.outbox)
        if etype is not None:
            worker = None if old is None else old.task.worker_id
            doc = event_doc(new.task, etype, worker)
            if (
                etype == EventType.PROGRESS
                and len(kept) >= OUTBOX_KEEP
                and '"type":"progress"' in kept[-1]
            ):
                # the sequencer is behind (the dispatcher is down): the item must stay
                # small (400 KB), so only the latest of the progress events waits
                kept[-1] = doc
            else:
                kept.append(doc)
        set_outbox(item, kept)
        return item

    def _transact(self, ops: list[Any]) -> bool:
        """Run a transaction of task writes: False when one lost its condition (or raced
        another transaction), so the caller reads again."""
        try:
            self._ddb.transact_write_items(TransactItems=ops)
        except ClientError as exc:
            if _is(exc, "TransactionCanceledException") and any(r in _LOST for r in reasons(exc)):
                return False
            raise
        return True

    def _put(
        self,
        item: Item,
        old_ver: int,
        extra: str = "",
        values: Item | None = None,
        names: dict[str, str] | None = None,
        *,
        old: _State,
    ) -> bool:
        """Write ``item`` if the stored version is still ``old_ver`` (and ``extra``),
        with its outbox (the event it makes over ``old``)."""
        cond = "ver = :old" + (f" AND {extra}" if extra else "")
        kwargs: dict[str, Any] = {}
        if names:
            kwargs["ExpressionAttributeNames"] = names
        self._with_event(old, item)
        try:
            self._ddb.put_item(
                TableName=self.table,
                Item=item,
                ConditionExpression=cond,
                ExpressionAttributeValues={":old": _n(old_ver), **(values or {})},
                **kwargs,
            )
        except ClientError as exc:
            if _is(exc, "ConditionalCheckFailedException"):
                return False
            raise
        return True

    def _mutate(self, task_id: str, change: Callable[[_State], Item | None]) -> _State:
        """Read-modify-write with optimistic concurrency; ``change`` may raise."""
        for _ in range(50):
            state = self._read(task_id)
            if state is None:
                raise TaskNotFound(f"task {task_id} not found")
            item = change(state)
            if item is None or self._put(item, state.ver, old=state):
                return state if item is None else _State(item)
        raise Conflict(f"task {task_id} is being changed concurrently; try again")

    def _held(self, state: _State, lease: Lease) -> None:
        if state.task.status != TaskStatus.PROCESSING or state.lease_token != lease.token:
            raise LeaseLost(f"lease on task {lease.task_id} is no longer held by this worker")

    def _mutate_held(self, lease: Lease, change: Callable[[_State], Item]) -> _State:
        """Fenced read-modify-write; the attempt's SQS message is deleted afterwards
        unless the new record still holds it (progress)."""
        based_on: list[_State] = []

        def guarded(state: _State) -> Item:
            self._held(state, lease)
            based_on[:] = [state]
            return change(state)

        try:
            done = self._mutate(lease.task_id, guarded)
        except TaskNotFound:
            raise LeaseLost(
                f"lease on task {lease.task_id} is no longer held by this worker"
            ) from None
        if based_on and based_on[0].receipt and done.receipt != based_on[0].receipt:
            self._delete_message(based_on[0].receipt)
        return done

    # -- SQS helpers -------------------------------------------------------------
    def _send(self, task_id: str, dispatch: str, delay_s: float = 0.0) -> None:
        """Send the delivery message, then clear ``unsent`` (best effort)."""
        try:
            self._sqs.send_message(
                QueueUrl=self.queue_url,
                MessageBody=json.dumps({"task": task_id, "dispatch": dispatch}),
                DelaySeconds=max(0, min(MAX_DELAY_S, int(delay_s))),
            )
        except ClientError:
            return  # the record stays ``unsent``; reap() sends it again
        try:
            self._ddb.update_item(
                TableName=self.table,
                Key={"task_id": _s(task_id)},
                UpdateExpression="REMOVE unsent",
                ConditionExpression="dispatch = :d",
                ExpressionAttributeValues={":d": _s(dispatch)},
            )
        except ClientError as exc:
            if not _is(exc, "ConditionalCheckFailedException"):
                raise

    def _delete_message(self, receipt: str | None) -> None:
        if not receipt:
            return
        # an expired receipt: the message is stale and is dropped when received again
        with contextlib.suppress(ClientError):
            self._sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=receipt)

    def _set_visibility(self, entries: list[tuple[str, int]]) -> None:
        for i in range(0, len(entries), 10):
            batch = entries[i : i + 10]
            with contextlib.suppress(ClientError):
                self._sqs.change_message_visibility_batch(
                    QueueUrl=self.queue_url,
                    Entries=[
                        {"Id": str(j), "ReceiptHandle": r, "VisibilityTimeout": v}
                        for j, (r, v) in enumerate(batch)
                    ],
                )

    def _requeue(self, state: _State, task: Task, delay_s: float) -> Item:
        """The item for ``task`` back to pending with a fresh dispatch (sent later)."""
        dispatch = secrets.token_hex(8)
        self._local.pending_send = (task.id, dispatch, delay_s)
        return self._item(task, ver=state.ver + 1, dispatch=dispatch, unsent=True)

    def _flush_send(self) -> None:
        pending: tuple[str, str, float] | None = getattr(self._local, "pending_send", None)
        self._local.pending_send = None
        if pending is not None:
            self._send(*pending)

    # -- submit ------------------------------------------------------------------
    def submit(self, task: Task) -> tuple[Task, bool]:
        if task.status != TaskStatus.PENDING:
            task = task.model_copy(update={"status": TaskStatus.PENDING})
        if not task.date_partition:
            task = task.model_copy(update={"date_partition": date_partition(task.created_at)})
        dispatch = secrets.token_hex(8)
        item = self._item(task, ver=1, dispatch=dispatch, unsent=True)
        self._with_event(None, item)  # its queued event, in the same item
        if task.idempotency_key:
            try:
                self._ddb.transact_write_items(
                    TransactItems=[
                        {
                            "Put": {
                                "TableName": self.aux_table,
                                "Item": {
                                    "pk": _s(f"idem#{task.idempotency_key}"),
                                    "sk": _s("idem"),
                                    "task_id": _s(task.id),
                                },
                                "ConditionExpression": "attribute_not_exists(pk)",
                            }
                        },
                        {
                            "Put": {
                                "TableName": self.table,
                                "Item": item,
                                "ConditionExpression": "attribute_not_exists(task_id)",
                            }
                        },
                    ]
                )
            except ClientError as exc:
                if not _is(exc, "TransactionCanceledException"):
                    raise
                existing = self._by_idempotency_key(task.idempotency_key)
                if existing is None:
                    raise Conflict(f"task {task.id} already exists") from None
                return existing, False
        else:
            try:
                self._ddb.put_item(
                    TableName=self.table,
                    Item=item,
                    ConditionExpression="attribute_not_exists(task_id)",
                )
            except ClientError as exc:
                if _is(exc, "ConditionalCheckFailedException"):
                    raise Conflict(f"task {task.id} already exists") from None
                raise
        self._send(task.id, dispatch)
        return task, True

    def _by_idempotency_key(self, key: str) -> Task | None:
        for _ in range(20):
            got = self._ddb.get_item(
                TableName=self.aux_table,
                Key={"pk": _s(f"idem#{key}"), "sk": _s("idem")},
                ConsistentRead=True,
            ).get("Item")
            if got is None:
                return None
            task = self.get(got["task_id"]["S"])
            if task is not None:
                return task
            time.sleep(0.05)  # pragma: no cover - transactions are atomic
        return None

    # -- worker protocol ---------------------------------------------------------
    def claim(
        self,
        worker_id: str,
        kinds: list[str],
        capacity: int,
        lease_s: float,
        max_gpus: int | None = None,
    ) -> list[ClaimedTask]:
        if capacity <= 0 or not kinds:
            return []
        visibility = min(MAX_VISIBILITY_S, max(1, math.ceil(lease_s)))
        wanted = set(kinds)
        now = time.time()
        # (priority, id) -> (message dispatch, receipt, state)
        candidates: list[tuple[int, str, str, str, _State]] = []
        give_back: list[tuple[str, int]] = []
        seen_ids: set[str] = set()
        passed_over = False
        for batch_no in range(max(1, min(5, math.ceil(capacity / 10) + 1))):
            msgs = self._sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=10,
                VisibilityTimeout=visibility,
                WaitTimeSeconds=self.claim_wait_s if batch_no == 0 else 0,
            ).get("Messages", [])
            if not msgs:
                break
            bodies: list[tuple[str, str, str]] = []
            for m in msgs:
                receipt = m["ReceiptHandle"]
                try:
                    body = json.loads(m.get("Body", ""))
                    bodies.append((str(body["task"]), str(body["dispatch"]), receipt))
                except (ValueError, KeyError, TypeError):
                    self._delete_message(receipt)  # not ours
            states = self._read_many({tid for tid, _, _ in bodies})
            for tid, dispatch, receipt in bodies:
                state = states.get(tid)
                if (
                    state is None
                    or state.task.status != TaskStatus.PENDING
                    or state.dispatch != dispatch
                    or tid in seen_ids
                ):
                    if tid in seen_ids:
                        give_back.append((receipt, 0))
                    else:
                        self._delete_message(receipt)  # stale message
                    continue
                seen_ids.add(tid)
                nb = state.task.not_before
                if state.task.kind not in wanted or (
                    max_gpus is not None and state.task.gpus > max_gpus
                ):
                    passed_over = True
                    give_back.append((receipt, 0))
                elif nb is not None and nb.timestamp() > now:
                    passed_over = True
                    wait = math.ceil(nb.timestamp() - now)
                    give_back.append((receipt, min(MAX_VISIBILITY_S, max(1, wait))))
                else:
                    candidates.append((-state.task.priority, tid, dispatch, receipt, state))
            if len(candidates) >= capacity or len(msgs) < 10:
                break
        candidates.sort(key=lambda c: (c[0], c[1]))
        claimed: list[ClaimedTask] = []
        for n, (_, _tid, dispatch, receipt, state) in enumerate(candidates):
            if len(claimed) >= capacity:
                give_back.append((receipt, 0))
                continue
            try:
                got = self._take(state, worker_id, lease_s, dispatch, receipt)
            except Exception:
                # DynamoDB failed the write (or its outbox write): nothing was claimed from
                # here on; the messages go back now, not when their visibility runs out
                self._set_visibility(give_back + [(c[3], 0) for c in candidates[n:]])
                raise
            if got is None:
                give_back.append((receipt, 0))
            else:
                claimed.append(got)
        self._set_visibility(give_back)
        self._local.passed_over = passed_over and not claimed
        return claimed

    def _read_many(self, ids: set[str]) -> dict[str, _State]:
        out: dict[str, _State] = {}
        for item in batch_get(self._ddb, self.table, [{"task_id": _s(t)} for t in ids]):
            st = _State(item)
            out[st.task.id] = st
        return out

    def _take(
        self, state: _State, worker_id: str, lease_s: float, dispatch: str, receipt: str
    ) -> ClaimedTask | None:
        now = time.time()
        token = secrets.token_hex(16)
        attempt = state.task.attempts + 1
        task = state.task.model_copy(
            update={
                "status": TaskStatus.PROCESSING,
                "attempts": attempt,
                "worker_id": worker_id,
                "started_at": _at(now),
                "updated_at": _at(now),
                "not_before": None,
                "progress": Progress(phase="starting"),
                "history": [
                    *state.task.history,
                    Attempt(number=attempt, worker_id=worker_id, started_at=_at(now)),
                ],
            }
        )
        item = self._item(
            task,
            ver=state.ver + 1,
            lease_token=token,
            lease_expires=now + lease_s,
            dispatch=dispatch,
            receipt=receipt,
        )
        if not self._put(
            item,
            state.ver,
            "#st = :pending AND dispatch = :d",
            {":pending": _s("pending"), ":d": _s(dispatch)},
            {"#st": "status"},
            old=state,
        ):
            return None
        lease = Lease(
            task_id=task.id,
            token=token,
            worker_id=worker_id,
            attempt=attempt,
            expires_at=_at(now + lease_s),
        )
        return ClaimedTask(task=task, lease=lease)

    def heartbeat(self, worker: WorkerInfo, leases: list[Lease], lease_s: float) -> HeartbeatResult:
        now = time.time()
        result = HeartbeatResult()
        worker = worker.model_copy(update={"last_seen": _at(now)})
        self._ddb.put_item(
            TableName=self.aux_table,
            Item={
                "pk": _s("worker"),
                "sk": _s(worker.id),
                "info": _s(worker.model_dump_json()),
                "last_seen": _n(now),
                "expires": _n(int(now) + _WORKER_TTL_S),
            },
        )
        visibility = min(MAX_VISIBILITY_S, max(1, math.ceil(lease_s)))
        extend: list[tuple[str, int]] = []
        for lease in leases:
            try:
                got = self._ddb.update_item(
                    TableName=self.table,
                    Key={"task_id": _s(lease.task_id)},
                    UpdateExpression="SET lease_expires = :exp, ver = ver + :one",
                    ConditionExpression="#st = :proc AND lease_token = :tok",
                    ExpressionAttributeNames={"#st": "status"},
                    ExpressionAttributeValues={
                        ":exp": _n(now + lease_s),
                        ":one": _n(1),
                        ":proc": _s("processing"),
                        ":tok": _s(lease.token),
                    },
                    ReturnValues="ALL_NEW",
                )
            except ClientError as exc:
                if _is(exc, "ConditionalCheckFailedException"):
                    result.lost.append(lease.task_id)
                    continue
                raise
            state = _State(got["Attributes"])
            result.renewed.append(lease.task_id)
            if state.task.cancel_requested:
                result.cancel.append(lease.task_id)
            if state.receipt:
                extend.append((state.receipt, visibility))
        self._set_visibility(extend)
        return result

    def progress(self, lease: Lease, progress: Progress) -> None:
        # progress events: at most one per task per interval, off (0) by default; the
        # interval is read each time (an operator's change applies at once)
        every_s = read_progress_interval(self._ddb, self.aux_table)

        def change(state: _State) -> Item:
            now = utcnow()
            task = state.task.model_copy(update={"progress": progress, "updated_at": now})
            item = self._same(state, task)
            last = state.progress_ev_at or 0.0
            if every_s > 0 and now.timestamp() - last >= every_s:
                item["ev_progress_at"] = _n(now.timestamp())  # _with_event: a progress event
            return item

        self._mutate_held(lease, change)

    def _same(self, state: _State, task: Task) -> Item:
        """``task`` with the bookkeeping of ``state`` kept, version bumped."""
        return self._item(
            task,
            ver=state.ver + 1,
            lease_token=state.lease_token,
            lease_expires=state.lease_expires,
            dispatch=state.dispatch,
            receipt=state.receipt,
            unsent=state.unsent,
            progress_ev_at=state.progress_ev_at,
        )

    @staticmethod
    def _closed(task: Task, outcome: str, error: str | None, now: datetime) -> list[Attempt]:
        return rules.close_attempt(task.history, outcome, error, now)

    def complete(self, lease: Lease, outputs: list[OutputFile]) -> Task:
        def change(state: _State) -> Item:
            now = utcnow()
            task = state.task.model_copy(
                update={
                    "status": TaskStatus.COMPLETED,
                    "outputs": outputs,
                    "progress": Progress(percent=100.0, phase="completed"),
                    "error": None,
                    "error_code": None,
                    "finished_at": now,
                    "updated_at": now,
                    "history": self._closed(state.task, "completed", None, now),
                }
            )
            # the token stays: a repeated call (its answer was lost) is answered the same
            return self._item(
                task, ver=state.ver + 1, dispatch=state.dispatch, lease_token=state.lease_token
            )

        try:
            first = self._read(lease.task_id)
            if first is not None and first.task.parent_id is not None:
                done = self._with_parent(lease, change, self._parent_after_completion)
            else:
                done = self._mutate_held(lease, change)
        except LeaseLost:
            again = self._read(lease.task_id)
            if again is None or not rules.completed_by(
                again.task.status, again.lease_token, lease, again.task.outputs, outputs
            ):
                raise
            return again.task
        return done.task

    def outputs_committed(self, task_id: str) -> Task:
        def change(state: _State) -> Item | None:
            task = state.task
            if task.status != TaskStatus.COMPLETED or not any(o.staged_key for o in task.outputs):
                return None
            return self._item(
                task.model_copy(update={"outputs": rules.committed_outputs(task.outputs)}),
                ver=state.ver + 1,
                dispatch=state.dispatch,
                lease_token=state.lease_token,
            )

        return self._mutate(task_id, change).task

    def _failed_item(
        self, state: _State, error: str, *, retryable: bool, code: str | None, outcome: str
    ) -> Item:
        now = utcnow()
        task = state.task
        end = rules.end_attempt(
            cancel_requested=task.cancel_requested,
            attempts=task.attempts,
            max_attempts=task.max_attempts,
            error=error,
            retryable=retryable,
            code=code,
            outcome=outcome,
            backoff_base=self.backoff_base,
            backoff_max=self.backoff_max,
        )
        delay_s = end.retry_in_s or 0.0
        task = task.model_copy(
            update={
                "status": end.status,
                "error": end.error,
                "error_code": end.code,
                "not_before": None if end.final else now + timedelta(seconds=delay_s),
                "updated_at": now,
                "finished_at": now if end.final else None,
                "history": self._closed(task, end.outcome, end.error, now),
            }
        )
        if end.final:
            return self._item(task, ver=state.ver + 1, dispatch=state.dispatch)
        return self._requeue(state, task, delay_s)

    def fail(self, lease: Lease, error: str, *, retryable: bool, code: str | None = None) -> Task:
        self._local.pending_send = None

        def change(state: _State) -> Item:
            return self._failed_item(
                state, error, retryable=retryable, code=code or "failed", outcome="failed"
            )

        first = self._read(lease.task_id)
        if first is not None and first.task.parent_id is not None:
            done = self._with_parent(lease, change, self._parent_after_failure)
        else:
            done = self._mutate_held(lease, change)
        self._flush_send()
        if done.task.status == TaskStatus.FAILED:
            self._park_in_dlq(done.task, done.dispatch)
        self._cascade(done.task)
        return done.task

    def release(self, lease: Lease, *, delay_s: float = 0.0, error: str | None = None) -> Task:
        self._local.pending_send = None

        def change(state: _State) -> Item:
            if state.task.cancel_requested:
                return self._failed_item(
                    state, "cancelled", retryable=False, code="cancelled", outcome="cancelled"
                )
            now = utcnow()
            task = state.task.model_copy(
                update={
                    "status": TaskStatus.PENDING,
                    "attempts": max(state.task.attempts - 1, 0),
                    "worker_id": None,
                    "updated_at": now,
                    "progress": Progress(),
                    "not_before": now + timedelta(seconds=delay_s) if delay_s > 0 else None,
                    "history": self._closed(state.task, "released", error, now),
                }
            )
            return self._requeue(state, task, max(0.0, delay_s))

        done = self._mutate_held(lease, change)
        self._flush_send()
        self._cascade(done.task)
        return done.task

    # -- parents and children ------------------------------------------------------
    # A child is linked to its parent by an aux item (pk ``children#<parent>``, sk the
    # child's id), written in the transaction that stores the children.  A child's
    # completion or failure is one TransactWriteItems with a write of its parent
    # (conditional on both versions): the last child completed wakes the parent (a
    # fresh dispatch, sent after the commit; ``unsent`` until then, so reap re-sends it
    # after a crash), a child failed for good fails it.  Every child's write touches the
    # parent (its version bumped), so two children ending at once are serialised and
    # the second reads the first completed.  What follows a parent's end (its other
    # children cancelled or asked to stop), and a child's end by reap, cancel or the
    # DLQ, are conditional writes made right after (``_cascade``), not in that
    # transaction: a crash between them leaves them undone.
    MAX_SPAWN = 49  # 2 items per child + the parent: TransactWriteItems takes 100

    def spawn_children(self, lease: Lease, children: list[Task]) -> Task:
        state = self._read(lease.task_id)
        if state is not None and rules.spawn_repeat(
            state.task.status, state.lease_token, state.task.children, lease
        ):
            return state.task
        if state is None:
            raise LeaseLost(f"lease on task {lease.task_id} is no longer held by this worker")
        self._held(state, lease)
        if state.task.cancel_requested:
            return self.release(lease)  # cancelled, nothing inserted
        stored = rules.prepare_children(state.task, children)
        if len(stored) > self.MAX_SPAWN:
            raise InvalidRequest(
                f"the AWS engine spawns at most {self.MAX_SPAWN} children at once, "
                f"not {len(stored)}"
            )
        now = utcnow()
        parent = state.task.model_copy(
            update={
                "status": TaskStatus.PENDING,
                "attempts": max(state.task.attempts - 1, 0),
                "children": len(stored),
                "worker_id": None,
                "not_before": rules.CHILDREN_HOLD,
                "updated_at": now,
                "progress": Progress.model_validate_json(rules.held_progress(len(stored))),
                "history": self._closed(state.task, rules.SPAWNED, None, now),
            }
        )
        # no dispatch: no message delivers a held parent; the token stays (a repeat)
        parent_item = self._item(parent, ver=state.ver + 1, lease_token=state.lease_token)
        ops: list[Any] = [
            {
                "Put": {
                    "TableName": self.table,
                    "Item": parent_item,
                    "ConditionExpression": "ver = :old AND lease_token = :tok",
                    "ExpressionAttributeValues": {
                        ":old": _n(state.ver),
                        ":tok": _s(lease.token),
                    },
                }
            }
        ]
        self._with_event(state, parent_item)
        sends: list[tuple[str, str]] = []
        for child in stored:
            dispatch = secrets.token_hex(8)
            sends.append((child.id, dispatch))
            child_item = self._item(child, ver=1, dispatch=dispatch, unsent=True)
            ops.append(
                {
                    "Put": {
                        "TableName": self.table,
                        "Item": child_item,
                        "ConditionExpression": "attribute_not_exists(task_id)",
                    }
                }
            )
            self._with_event(None, child_item)
            ops.append(
                {
                    "Put": {
                        "TableName": self.aux_table,
                        "Item": {
                            "pk": _s(f"children#{parent.id}"),
                            "sk": _s(child.id),
                            "task_id": _s(child.id),
                        },
                    }
                }
            )
        try:
            self._ddb.transact_write_items(TransactItems=ops)
        except ClientError as exc:
            if not _is(exc, "TransactionCanceledException"):
                raise
            again = self._read(lease.task_id)
            if again is not None and rules.spawn_repeat(
                again.task.status, again.lease_token, again.task.children, lease
            ):
                return again.task
            raise LeaseLost(
                f"lease on task {lease.task_id} is no longer held by this worker"
            ) from None
        self._delete_message(state.receipt)
        for child_id, dispatch in sends:
            self._send(child_id, dispatch)
        return parent

    def _child_ids(self, parent_id: str) -> list[str]:
        ids: list[str] = []
        kwargs: dict[str, Any] = {
            "TableName": self.aux_table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": _s(f"children#{parent_id}")},
            "ConsistentRead": True,
        }
        ids.extend(str(i["sk"]["S"]) for i in items(self._ddb.query, **kwargs))
        return ids

    def children(self, task_id: str) -> list[Task]:
        states = self._read_many(set(self._child_ids(task_id)))
        return [states[i].task for i in sorted(states)]

    def _unlink_children(self, parent_id: str) -> None:
        for child_id in self._child_ids(parent_id):
            self._ddb.delete_item(
                TableName=self.aux_table,
                Key={"pk": _s(f"children#{parent_id}"), "sk": _s(child_id)},
            )

            def unlink(st: _State) -> Item | None:
                if st.task.parent_id != parent_id:
                    return None
                return self._same(st, st.task.model_copy(update={"parent_id": None}))

            with contextlib.suppress(TaskNotFound):
                self._mutate(child_id, unlink)

    def _parent_after_completion(self, parent: _State, child: Task) -> tuple[Item, str | None]:
        """The parent's item once ``child`` completed: woken (a fresh dispatch, returned
        to be sent) when every other child completed, else only its version bumped."""
        task = parent.task
        if task.waiting_for_children:
            others = set(self._child_ids(task.id)) - {child.id}
            states = self._read_many(others)
            if len(states) == len(others) and all(
                st.task.status == TaskStatus.COMPLETED for st in states.values()
            ):
                woken = task.model_copy(update={"not_before": None, "updated_at": utcnow()})
                dispatch = secrets.token_hex(8)
                item = self._item(
                    woken,
                    ver=parent.ver + 1,
                    lease_token=parent.lease_token,
                    dispatch=dispatch,
                    unsent=True,
                )
                return item, dispatch
        return self._same(parent, task), None

    def _parent_after_failure(self, parent: _State, child: Task) -> tuple[Item, str | None]:
        """The parent's item once ``child`` ended: failed, naming it, when the child failed
        for good or was cancelled and the parent waits for it; else version bumped."""
        task = parent.task
        if child.status in (TaskStatus.FAILED, TaskStatus.CANCELLED) and (
            task.status == TaskStatus.PENDING and task.children > 0
        ):
            now = utcnow()
            failed = task.model_copy(
                update={
                    "status": TaskStatus.FAILED,
                    "error": rules.child_failed_error(child.id, child.status, child.error),
                    "error_code": rules.CHILD_FAILED_CODE,
                    "not_before": None,
                    "finished_at": now,
                    "updated_at": now,
                }
            )
            return self._item(failed, ver=parent.ver + 1, lease_token=parent.lease_token), None
        return self._same(parent, task), None

    def _with_parent(
        self,
        lease: Lease,
        change: Callable[[_State], Item],
        parent_change: Callable[[_State, Task], tuple[Item, str | None]],
    ) -> _State:
        """A fenced change of a child and the write of its parent, in one transaction."""
        for _ in range(50):
            state = self._read(lease.task_id)
            if state is None:
                raise LeaseLost(f"lease on task {lease.task_id} is no longer held by this worker")
            self._held(state, lease)
            assert state.task.parent_id is not None
            parent = self._read(state.task.parent_id)
            item = change(state)
            if parent is None:  # the parent is gone: the child ends on its own
                if self._put(item, state.ver, old=state):
                    break
                continue
            new = _State(self._with_event(state, item))
            parent_item, wake = parent_change(parent, new.task)
            self._with_event(parent, parent_item)
            ops: list[Any] = [
                {
                    "Put": {
                        "TableName": self.table,
                        "Item": item,
                        "ConditionExpression": "ver = :old",
                        "ExpressionAttributeValues": {":old": _n(state.ver)},
                    }
                },
                {
                    "Put": {
                        "TableName": self.table,
                        "Item": parent_item,
                        "ConditionExpression": "ver = :old",
                        "ExpressionAttributeValues": {":old": _n(parent.ver)},
                    }
                },
            ]
            if not self._transact(ops):
                continue
            if wake is not None:
                self._send(parent.task.id, wake)
            new_parent = _State(parent_item).task
            if new_parent.status == TaskStatus.FAILED:
                self._cascade(new_parent)
            break
        else:
            raise Conflict(f"task {lease.task_id} is being changed concurrently; try again")
        if state.receipt and new.receipt != state.receipt:
            self._delete_message(state.receipt)
        return new

    def _cascade(self, task: Task) -> None:
        """What follows a task's end: a child failed or cancelled fails its held parent
        (when that was not done in the child's own transaction); a parent failed or
        cancelled cancels its pending children and asks its running ones to stop."""
        if task.status not in (TaskStatus.FAILED, TaskStatus.CANCELLED):
            return
        if task.parent_id is not None:

            def fail_parent(st: _State) -> Item | None:
                if not (st.task.status == TaskStatus.PENDING and st.task.children > 0):
                    return None
                return self._parent_after_failure(st, task)[0]

            with contextlib.suppress(TaskNotFound):
                parent = self._mutate(task.parent_id, fail_parent)
                if parent.task.status == TaskStatus.FAILED and parent.ver > 0:
                    self._cascade_children(parent.task)
        if task.children > 0:
            self._cascade_children(task)

    def _cascade_children(self, parent: Task) -> None:
        for child_id in self._child_ids(parent.id):

            def stop(st: _State) -> Item | None:
                now = utcnow()
                if st.task.status == TaskStatus.PENDING:
                    task = st.task.model_copy(
                        update={
                            "status": TaskStatus.CANCELLED,
                            "error": rules.parent_ended_error(parent.id, parent.status),
                            "error_code": rules.CANCELLED_CODE,
                            "not_before": None,
                            "finished_at": now,
                            "updated_at": now,
                        }
                    )
                    return self._item(task, ver=st.ver + 1, dispatch=st.dispatch)
                if st.task.status == TaskStatus.PROCESSING and not st.task.cancel_requested:
                    task = st.task.model_copy(update={"cancel_requested": True, "updated_at": now})
                    return self._same(st, task)
                return None

            with contextlib.suppress(TaskNotFound):
                self._mutate(child_id, stop)

    def reap(self) -> int:
        now = time.time()
        touched = 0
        for item in self._query_shards(
            TaskStatus.PROCESSING,
            "lease_expires < :now",
            {":now": _n(now)},
        ):
            state = _State(item)
            if state.lease_expires is None or state.lease_expires >= now:
                continue
            self._local.pending_send = None
            new = self._failed_item(
                state,
                rules.lease_expired_error(state.task.worker_id),
                retryable=True,
                code=rules.LEASE_EXPIRED_CODE,
                outcome=rules.LEASE_EXPIRED_CODE,
            )
            if self._put(new, state.ver, "lease_expires < :now", {":now": _n(now)}, old=state):
                touched += 1
                self._delete_message(state.receipt)
                self._flush_send()
                if new["status"]["S"] == TaskStatus.FAILED.value:
                    self._park_in_dlq(_State(new).task, state.dispatch)
                self._cascade(_State(new).task)
        self._resend_unsent(now)
        self._drain_dlq()
        return touched

    def _resend_unsent(self, now: float) -> None:
        """Send the messages of pending tasks whose send failed (see ``_send``)."""
        grace_s = self.resend_grace_s
        for item in self._query_shards(
            TaskStatus.PENDING,
            "unsent = :t AND updated_at < :old",
            {
                ":t": {"BOOL": True},
                ":old": _n(now - grace_s),
            },
        ):
            state = _State(item)
            if state.dispatch:
                nb = state.task.not_before
                self._send(state.task.id, state.dispatch, nb.timestamp() - now if nb else 0.0)

    def _dlq(self) -> str | None:
        if not self._dlq_checked:
            self._dlq_checked = True
            try:
                attrs = self._sqs.get_queue_attributes(
                    QueueUrl=self.queue_url, AttributeNames=["RedrivePolicy"]
                ).get("Attributes", {})
                policy = json.loads(attrs.get("RedrivePolicy", "{}"))
                arn = str(policy.get("deadLetterTargetArn", ""))
                if arn:
                    parts = arn.split(":")
                    self._dlq_url = self._sqs.get_queue_url(
                        QueueName=parts[-1], QueueOwnerAWSAccountId=parts[-2]
                    )["QueueUrl"]
            except (ClientError, ValueError):
                self._dlq_url = None
        return self._dlq_url

    def _park_in_dlq(self, task: Task, dispatch: str | None) -> None:
        """Leave a task that used up its attempts in the DLQ, where operators look.

        The body says it is ``final`` (already mirrored), so ``_drain_dlq``
        does not read its record again.  Best effort: the record is the truth.
        """
        dlq = self._dlq()
        if dlq is None:
            return
        body = {
            "task": task.id,
            "dispatch": dispatch or "",
            "final": True,
            "attempts": task.attempts,
            "reason": task.error or "",
        }
        with contextlib.suppress(ClientError):
            self._sqs.send_message(QueueUrl=dlq, MessageBody=json.dumps(body))

    def _drain_dlq(self) -> None:
        """Mirror dead-lettered messages as failed tasks; the messages stay for operators.

        Messages are only peeked (visibility 0), so the DLQ stays browsable
        and redrivable; a pass runs at most every ``dlq_interval_s`` and a
        message mirrored once (or parked by us, ``final``) is not read again.
        The queue's retention period (14 days in the templates) removes them.
        """
        now = time.monotonic()
        if now - self._dlq_last < self.dlq_interval_s:
            return
        self._dlq_last = now
        dlq = self._dlq()
        if dlq is None:
            return
        if len(self._dlq_seen) > 100_000:
            self._dlq_seen.clear()
        for _ in range(10):
            msgs = self._sqs.receive_message(
                QueueUrl=dlq, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=0
            ).get("Messages", [])
            fresh = [m for m in msgs if m["MessageId"] not in self._dlq_seen]
            if not fresh:
                return
            for m in fresh:
                self._dlq_seen.add(m["MessageId"])
                try:
                    body = json.loads(m.get("Body", ""))
                    task_id, dispatch = str(body["task"]), str(body["dispatch"])
                    final = bool(body.get("final"))
                except (ValueError, KeyError, TypeError, AttributeError):
                    task_id, dispatch, final = "", "", True
                if task_id and not final:
                    self._dead_letter(task_id, dispatch)

    def _dead_letter(self, task_id: str, dispatch: str) -> None:
        def change(state: _State) -> Item | None:
            if state.dispatch != dispatch or state.task.status in (
                TaskStatus.COMPLETED,
                TaskStatus.FAILED,
                TaskStatus.CANCELLED,
            ):
                return None
            now = utcnow()
            reason = "dead-lettered: the SQS message exceeded its receive count"
            task = state.task.model_copy(
                update={
                    "status": TaskStatus.FAILED,
                    "error": reason,
                    "error_code": "dead_lettered",
                    "not_before": None,
                    "finished_at": now,
                    "updated_at": now,
                    "history": self._closed(state.task, "failed", reason, now),
                }
            )
            return self._item(task, ver=state.ver + 1, dispatch=state.dispatch)

        with contextlib.suppress(TaskNotFound):
            self._cascade(self._mutate(task_id, change).task)

    # -- operator actions ----------------------------------------------------
    def cancel(self, task_id: str) -> Task:
        def change(state: _State) -> Item:
            now = utcnow()
            if rules.cancel_action(task_id, state.task.status) == "cancel":
                task = state.task.model_copy(
                    update={
                        "status": TaskStatus.CANCELLED,
                        "error": rules.CANCELLED_BY_REQUEST,
                        "error_code": rules.CANCELLED_CODE,
                        "not_before": None,
                        "finished_at": now,
                        "updated_at": now,
                    }
                )
                return self._item(task, ver=state.ver + 1, dispatch=state.dispatch)
            task = state.task.model_copy(update={"cancel_requested": True, "updated_at": now})
            return self._same(state, task)

        done = self._mutate(task_id, change).task
        self._cascade(done)
        return done

    def retry(self, task_id: str) -> Task:
        self._local.pending_send = None

        old = self._read(task_id)
        if old is not None and old.task.children > 0:
            rules.check_retry(task_id, old.task.status)
            self._unlink_children(task_id)  # a retried parent starts over

        def change(state: _State) -> Item:
            rules.check_retry(task_id, state.task.status)
            task = state.task.model_copy(
                update={
                    "status": TaskStatus.PENDING,
                    "children": 0,
                    "attempts": 0,
                    "error": None,
                    "error_code": None,
                    "outputs": [],
                    "progress": Progress(),
                    "cancel_requested": False,
                    "not_before": None,
                    "finished_at": None,
                    "worker_id": None,
                    "updated_at": utcnow(),
                }
            )
            return self._requeue(state, task, 0.0)

        done = self._mutate(task_id, change)
        self._flush_send()
        return done.task

    def clear_pending(self) -> int:
        """Cancel every pending task (their messages are dropped when received)."""
        n = 0
        for item in self._query_shards(TaskStatus.PENDING):
            state = _State(item)

            def change(st: _State) -> Item | None:
                if st.task.status != TaskStatus.PENDING:
                    return None
                now = utcnow()
                task = st.task.model_copy(
                    update={
                        "status": TaskStatus.CANCELLED,
                        "error": rules.QUEUE_CLEARED,
                        "error_code": rules.CANCELLED_CODE,
                        "not_before": None,
                        "finished_at": now,
                        "updated_at": now,
                    }
                )
                return self._item(task, ver=st.ver + 1, dispatch=st.dispatch)

            try:
                done = self._mutate(state.task.id, change).task
            except TaskNotFound:
                continue
            if done.status == TaskStatus.CANCELLED:
                n += 1
                self._cascade(done)
        return n

    # -- reading -----------------------------------------------------------------
    def get(self, task_id: str) -> Task | None:
        state = self._read(task_id)
        return None if state is None else state.task

    def _query(
        self,
        index: str,
        hash_name: str,
        hash_value: str,
        *,
        before: str | None = None,
        filters: list[str] | None = None,
        values: Item | None = None,
        names: dict[str, str] | None = None,
        page: int = 100,
    ) -> Iterator[Item]:
        """Items of one index partition, newest ``created_key`` first."""
        cond = "#h = :h"
        attr_names = {"#h": hash_name, **(names or {})}
        attr_values: Item = {":h": _s(hash_value), **(values or {})}
        if before is not None:
            cond += " AND created_key < :before"
            attr_values[":before"] = _s(before)
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": index,
            "KeyConditionExpression": cond,
            "ExpressionAttributeNames": attr_names,
            "ExpressionAttributeValues": attr_values,
            "ScanIndexForward": False,
            "Limit": page,
        }
        if filters:
            kwargs["FilterExpression"] = " AND ".join(filters)
        yield from items(self._ddb.query, **kwargs)

    def _query_shards(
        self, status: TaskStatus, filter_expr: str | None = None, values: Item | None = None
    ) -> Iterator[Item]:
        for key in self._shard_keys(status):
            yield from self._query(
                "status-index",
                "status_shard",
                key,
                filters=[filter_expr] if filter_expr else None,
                values=values,
            )

    def counts(self, today: str | None = None) -> QueueCounts:
        now = time.time()
        day = today or date_partition(utcnow())
        start = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC)
        lo, hi = start.timestamp(), (start + timedelta(days=1)).timestamp()
        out = QueueCounts()
        hold = rules.CHILDREN_HOLD.timestamp()
        for item in self._query_shards(TaskStatus.PENDING):
            nb = _num(item, "not_before")
            if nb is not None and nb >= hold:
                out.waiting_for_children += 1
            elif nb is not None and nb > now:
                out.delayed += 1
            else:
                out.pending += 1
        out.processing = sum(1 for _ in self._query_shards(TaskStatus.PROCESSING))
        for status, attr in (
            (TaskStatus.COMPLETED, "completed_today"),
            (TaskStatus.FAILED, "failed_today"),
            (TaskStatus.CANCELLED, "cancelled_today"),
        ):
            n = sum(
                1
                for _ in self._query_shards(
                    status,
                    "finished_at >= :lo AND finished_at < :hi",
                    {":lo": _n(lo), ":hi": _n(hi)},
                )
            )
            setattr(out, attr, n)
        out.by_status = out.by_status_counts()
        return out

    def workers(self, active_within_s: float = 60.0) -> list[WorkerInfo]:
        cutoff = time.time() - active_within_s
        out: list[WorkerInfo] = []
        kwargs: dict[str, Any] = {
            "TableName": self.aux_table,
            "KeyConditionExpression": "pk = :pk",
            "FilterExpression": "last_seen >= :cut",
            "ExpressionAttributeValues": {":pk": _s("worker"), ":cut": _n(cutoff)},
            "ConsistentRead": True,
        }
        out.extend(
            WorkerInfo.model_validate_json(i["info"]["S"]) for i in items(self._ddb.query, **kwargs)
        )
        return out

    # -- logs --------------------------------------------------------------------
    def append_logs(
        self, task_id: str, attempt: int, lines: list[tuple[datetime, str, str]]
    ) -> None:
        if not lines:
            return
        got = self._ddb.update_item(
            TableName=self.aux_table,
            Key={"pk": _s(f"logseq#{task_id}"), "sk": _s("seq")},
            UpdateExpression="ADD n :n",
            ExpressionAttributeValues={":n": _n(len(lines))},
            ReturnValues="UPDATED_NEW",
        )
        last = int(got["Attributes"]["n"]["N"])
        first = last - len(lines) + 1
        requests: list[Any] = [
            {
                "PutRequest": {
                    "Item": {
                        "pk": _s(f"log#{task_id}"),
                        "sk": _s(f"{first + i:012d}"),
                        "attempt": _n(attempt),
                        "ts": _n(ts.timestamp()),
                        "stream": _s(stream),
                        "line": _s(line),
                    }
                }
            }
            for i, (ts, stream, line) in enumerate(lines)
        ]
        for i in range(0, len(requests), 25):
            batch: dict[str, Any] = {self.aux_table: requests[i : i + 25]}
            for _ in range(20):
                resp = self._ddb.batch_write_item(RequestItems=batch)
                batch = dict(resp.get("UnprocessedItems", {}))
                if not batch:
                    break
                time.sleep(0.05)

    def read_logs(
        self, task_id: str, *, attempt: int | None = None, after_seq: int = 0, limit: int = 1000
    ) -> list[LogLine]:
        limit = max(1, min(limit, 10000))
        kwargs: dict[str, Any] = {
            "TableName": self.aux_table,
            "KeyConditionExpression": "pk = :pk AND sk > :after",
            "ExpressionAttributeValues": {
                ":pk": _s(f"log#{task_id}"),
                ":after": _s(f"{max(0, after_seq):012d}"),
            },
            "ConsistentRead": True,
            "Limit": limit,
        }
        if attempt is not None:
            kwargs["FilterExpression"] = "attempt = :a"
            kwargs["ExpressionAttributeValues"][":a"] = _n(attempt)
        out: list[LogLine] = []
        while len(out) < limit:
            resp = self._ddb.query(**kwargs)
            for i in resp.get("Items", []):
                out.append(
                    LogLine(
                        seq=int(i["sk"]["S"]),
                        attempt=int(i["attempt"]["N"]),
                        ts=_at(float(i["ts"]["N"])),
                        stream=i["stream"]["S"],
                        line=i["line"]["S"],
                    )
                )
            if not resp.get("LastEvaluatedKey"):
                break
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]
        return out[:limit]

    # -- plumbing ----------------------------------------------------------------
    def wait_for_work(self, timeout: float) -> None:
        """Long-poll the queue without taking anything (visibility 0: a peek)."""
        if timeout <= 0:
            return
        if getattr(self._local, "passed_over", False):
            # the last claim only saw messages it could not take: do not spin on them
            self._local.passed_over = False
            time.sleep(min(timeout, 1.0))
            return
        self._sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=1,
            VisibilityTimeout=0,
            WaitTimeSeconds=max(1, min(20, math.ceil(timeout))),
        )

    def ping(self) -> None:
        self._ddb.describe_table(TableName=self.table)
        self._sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])

    def close(self) -> None:
        self._ddb.close()
        self._sqs.close()

    def list(
        self,
        *,
        status: TaskStatus | None = None,
        date: str | None = None,
        kind: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
        text: str | None = None,
        external_id: str | None = None,
    ) -> Page:
        limit = max(1, min(int(limit), 1000))
        before = _key_of(*decode_cursor(cursor)) if cursor else None
        filters: list[str] = []
        values: Item = {}
        names: dict[str, str] = {}
        if kind is not None:
            filters.append("kind = :kind")
            values[":kind"] = _s(kind)
        if text:
            filters.append("contains(key_lc, :text)")
            values[":text"] = _s(text.lower())
        if external_id is not None:
            filters.append("external_id = :ext")
            values[":ext"] = _s(external_id)
        page = min(1000, max(limit + 1, 50))
        sources: list[Iterator[Item]] = []
        if date is not None:
            if status is not None:
                filters.append("#st = :st")
                names["#st"] = "status"
                values[":st"] = _s(TaskStatus(status).value)
            sources.append(
                self._query(
                    "date-index",
                    "date_partition",
                    date,
                    before=before,
                    filters=filters,
                    values=values,
                    names=names,
                    page=page,
                )
            )
        else:
            statuses = [TaskStatus(status)] if status is not None else list(TaskStatus)
            for st in statuses:
                for key in self._shard_keys(st):
                    sources.append(
                        self._query(
                            "status-index",
                            "status_shard",
                            key,
                            before=before,
                            filters=filters,
                            values=values,
                            page=page,
                        )
                    )
        merged = heapq.merge(*sources, key=lambda i: str(i["created_key"]["S"]), reverse=True)
        rows: list[Item] = []
        for item in merged:
            rows.append(item)
            if len(rows) > limit:
                break
        tasks = [_State(r).task for r in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = tasks[-1]
            next_cursor = encode_cursor(last.created_at, last.id)
        return Page(items=tasks, next_cursor=next_cursor)
