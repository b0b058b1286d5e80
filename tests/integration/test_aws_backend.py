"""What the AWS engine does beyond the shared contract (tests/contract).

Runs on the throwaway moto_server (tests/motoserver.py): skipped when it
cannot start, failed under ``CI=true``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from conveyor.backends import open_backend
from conveyor.backends.aws import AWSBackend
from conveyor.errors import InvalidRequest
from conveyor.models import InputRef, Task, TaskStatus, WorkerInfo
from tests.motoserver import require_server

LONG = 60.0


@pytest.fixture
def url() -> str:
    return require_server().backend_url()


@pytest.fixture
def backend(url: str) -> Iterator[AWSBackend]:
    b = open_backend(url)
    assert isinstance(b, AWSBackend)
    yield b
    b.close()


def _queue_attr(b: AWSBackend, name: str, queue_url: str | None = None) -> int:
    resp: Any = b._sqs.get_queue_attributes(
        QueueUrl=queue_url or b.queue_url,
        AttributeNames=[name],  # type: ignore[list-item]
    )
    return int(resp["Attributes"][name])


def test_url_without_required_parts_is_an_invalid_request() -> None:
    with pytest.raises(InvalidRequest, match="queue_url"):
        open_backend("aws://?table=t&region=us-east-1")
    with pytest.raises(InvalidRequest, match="shards"):
        open_backend("aws://?queue_url=http://q&table=t&region=us-east-1&claim_wait=x")
    with pytest.raises(InvalidRequest, match="shards"):
        open_backend("aws://?queue_url=http://q&table=t&region=us-east-1&shards=many")


def test_status_key_is_sharded_and_listing_merges_the_shards(backend: AWSBackend) -> None:
    tasks = [backend.submit(Task(kind="x"))[0] for _ in range(40)]
    shards = set()
    for t in tasks:
        item = backend._ddb.get_item(TableName=backend.table, Key={"task_id": {"S": t.id}})
        shards.add(item["Item"]["status_shard"]["S"])
    assert len(shards) > 1 and all(s.startswith("pending#") for s in shards)

    seen: list[str] = []
    cursor = None
    while True:
        page = backend.list(status=TaskStatus.PENDING, limit=7, cursor=cursor)
        seen.extend(t.id for t in page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [t.id for t in sorted(tasks, key=lambda t: (t.created_at, t.id), reverse=True)]


def test_a_failed_send_is_recovered_by_reap(
    backend: AWSBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_send = backend._sqs.send_message

    def broken(**kwargs: Any) -> Any:
        raise ClientError({"Error": {"Code": "ServiceUnavailable", "Message": "down"}}, "Send")

    monkeypatch.setattr(backend._sqs, "send_message", broken)
    task, created = backend.submit(Task(kind="y"))
    assert created
    assert backend.get(task.id) is not None  # recorded even though the send failed
    assert backend.claim("w1", ["y"], 1, LONG) == []

    monkeypatch.setattr(backend._sqs, "send_message", real_send)
    backend.resend_grace_s = 0.0
    time.sleep(0.01)
    backend.reap()
    [claimed] = backend.claim("w1", ["y"], 1, LONG)
    assert claimed.task.id == task.id


def test_heartbeat_extends_the_message_visibility(backend: AWSBackend) -> None:
    backend.submit(Task(kind="z"))
    [c] = backend.claim("w1", ["z"], 1, lease_s=1)
    backend.heartbeat(WorkerInfo(id="w1"), [c.lease], lease_s=30)
    time.sleep(1.5)
    assert _queue_attr(backend, "ApproximateNumberOfMessages") == 0
    assert _queue_attr(backend, "ApproximateNumberOfMessagesNotVisible") == 1
    backend.complete(c.lease, [])
    assert _queue_attr(backend, "ApproximateNumberOfMessagesNotVisible") == 0


def test_messages_of_cancelled_tasks_are_dropped_on_receipt(backend: AWSBackend) -> None:
    task, _ = backend.submit(Task(kind="c"))
    backend.cancel(task.id)
    assert _queue_attr(backend, "ApproximateNumberOfMessages") == 1
    assert backend.claim("w1", ["c"], 1, LONG) == []
    assert _queue_attr(backend, "ApproximateNumberOfMessages") == 0
    assert _queue_attr(backend, "ApproximateNumberOfMessagesNotVisible") == 0


def test_dead_lettered_message_is_mirrored_as_failed(backend: AWSBackend) -> None:
    task, _ = backend.submit(Task(kind="d", input=InputRef(bucket="b", key="k.mp4")))
    state = backend._read(task.id)
    assert state is not None and state.dispatch
    dlq = backend._dlq()
    assert dlq is not None
    backend._sqs.send_message(
        QueueUrl=dlq, MessageBody=json.dumps({"task": task.id, "dispatch": state.dispatch})
    )
    backend.reap()
    got = backend.get(task.id)
    assert got is not None
    assert got.status == TaskStatus.FAILED
    assert got.error_code == "dead_lettered"
    assert "dead-lettered" in (got.error or "")
    # mirrored once, and left in the DLQ for operators
    assert _queue_attr(backend, "ApproximateNumberOfMessages", dlq) == 1
    backend.dlq_interval_s = 0.0
    backend.reap()
    assert backend.get(task.id) == got


def test_exhausted_attempts_leave_the_task_failed_and_its_message_in_the_dlq(
    backend: AWSBackend,
) -> None:
    task, _ = backend.submit(Task(kind="f", max_attempts=2))
    backend.backoff_base = 0.0
    for attempt in (1, 2):
        deadline = time.monotonic() + 10
        claimed: list[Any] = []
        while not claimed and time.monotonic() < deadline:
            claimed = backend.claim("w1", ["f"], 1, LONG)
        assert claimed, f"attempt {attempt} was never delivered"
        backend.fail(claimed[0].lease, f"boom {attempt}", retryable=True)
    got = backend.get(task.id)
    assert got is not None and got.status == TaskStatus.FAILED and got.attempts == 2
    dlq = backend._dlq()
    assert dlq is not None
    assert _queue_attr(backend, "ApproximateNumberOfMessages") == 0
    msgs = backend._sqs.receive_message(QueueUrl=dlq, WaitTimeSeconds=1).get("Messages", [])
    [body] = [json.loads(m["Body"]) for m in msgs]
    assert body["task"] == task.id and body["final"] is True and body["reason"] == "boom 2"


def test_redrive_after_max_receives_reaches_the_dlq_and_fails_the_task() -> None:
    b = AWSBackend.from_url(require_server().backend_url(max_receives=1))
    try:
        task, _ = b.submit(Task(kind="e"))
        # a kind nobody serves: every claim passes the message over (one receive each)
        for _ in range(3):
            b.claim("w1", ["other"], 1, LONG)
        b.reap()
        got = b.get(task.id)
        assert got is not None and got.status == TaskStatus.FAILED
        assert got.error_code == "dead_lettered"
    finally:
        b.close()


def test_claim_takes_the_highest_priority_of_the_received_batch(backend: AWSBackend) -> None:
    low = [backend.submit(Task(kind="p", priority=0))[0] for _ in range(4)]
    high = backend.submit(Task(kind="p", priority=9))[0]
    [c] = backend.claim("w1", ["p"], 1, LONG)
    assert c.task.id == high.id
    rest = backend.claim("w1", ["p"], 10, LONG)
    assert [x.task.id for x in rest] == [t.id for t in low]


def test_wait_for_work_long_polls_and_does_not_spin(backend: AWSBackend) -> None:
    start = time.monotonic()
    backend.wait_for_work(1.0)
    assert 0.8 <= time.monotonic() - start < 5

    backend.submit(Task(kind="other-kind"))
    assert backend.claim("w1", ["mine"], 1, LONG) == []
    start = time.monotonic()
    backend.wait_for_work(0.5)  # the only message is not ours: sleep, do not return at once
    assert time.monotonic() - start >= 0.45


def test_claim_can_long_poll_an_empty_queue(url: str) -> None:
    b = AWSBackend.from_url(url + "&claim_wait=1")
    try:
        start = time.monotonic()
        assert b.claim("w1", ["q"], 1, LONG) == []
        assert time.monotonic() - start >= 0.8
        b.submit(Task(kind="q"))
        start = time.monotonic()
        assert len(b.claim("w1", ["q"], 1, LONG)) == 1
        assert time.monotonic() - start < 0.8
    finally:
        b.close()


def test_a_task_needing_more_gpus_is_handed_back_at_once_and_its_record_left_alone(
    backend: AWSBackend,
) -> None:
    big = backend.submit(Task(kind="container", gpus=4))[0]
    item = backend._ddb.get_item(TableName=backend.table, Key={"task_id": {"S": big.id}})["Item"]
    assert item["gpus"] == {"N": "4"}  # an attribute of its own, beside the document
    for _ in range(3):  # each claim receives the message and hands it straight back
        assert backend.claim("w1", ["container"], 1, LONG, max_gpus=2) == []
    after = backend._ddb.get_item(TableName=backend.table, Key={"task_id": {"S": big.id}})
    assert after["Item"]["ver"] == item["ver"]  # nothing written: no attempt counted
    got = backend.claim("w2", ["container"], 1, LONG, max_gpus=4)  # visible again at once
    assert [c.task.id for c in got] == [big.id] and got[0].lease.attempt == 1


def test_a_record_written_before_gpus_was_a_field_reads_it_from_the_params(
    backend: AWSBackend,
) -> None:
    task = backend.submit(Task(kind="container", params={"command": ["true"], "gpus": ["0", "2"]}))[
        0
    ]
    key = {"task_id": {"S": task.id}}
    doc = json.loads(backend._ddb.get_item(TableName=backend.table, Key=key)["Item"]["doc"]["S"])
    del doc["gpus"]
    backend._ddb.update_item(
        TableName=backend.table,
        Key=key,
        UpdateExpression="SET doc = :d REMOVE gpus",
        ExpressionAttributeValues={":d": {"S": json.dumps(doc)}},
    )
    assert backend.get(task.id).gpus == 2  # type: ignore[union-attr]
    assert backend.claim("w1", ["container"], 1, LONG, max_gpus=1) == []
    assert [c.task.id for c in backend.claim("w1", ["container"], 1, LONG, max_gpus=2)] == [task.id]
