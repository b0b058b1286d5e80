"""S3 event notifications -> tasks: parsing on real notification samples, and the consumer."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from conveyor.errors import ObjectNotFound
from conveyor.models import Trigger
from conveyor.processors import ProcessorRegistry
from conveyor.service import ConveyorService, SubmitRequest, upload_dedup_key
from conveyor.storage import ObjectInfo
from conveyor.triggers.s3_events import (
    MalformedEvent,
    S3EventConsumer,
    S3ObjectEvent,
    parse_message,
    uploads,
)


def record(
    key: str,
    *,
    event: str = "ObjectCreated:Put",
    bucket: str = "media-input",
    size: int = 1048576,
    etag: str | None = "d41d8cd98f00b204e9800998ecf8427e",
    sequencer: str = "0055AED6DCD90281E5",
) -> dict[str, Any]:
    """A record as S3 sends it (shape copied from a real ObjectCreated:Put notification)."""
    obj: dict[str, Any] = {"key": key, "size": size, "sequencer": sequencer}
    if etag is not None:
        obj["eTag"] = etag
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "region-1",
        "eventTime": "2026-11-22T09:00:00.000Z",
        "eventName": event,
        "userIdentity": {"principalId": "AWS:EXAMPLEPRINCIPAL"},
        "requestParameters": {"sourceIPAddress": "192.0.2.10"},
        "responseElements": {
            "x-amz-request-id": "C3D13FE58DE4C810",
            "x-amz-id-2": "FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4V5Wp6S7S/JRWeUWerMUE5JgHvANOjpD",
        },
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "conveyor-uploads",
            "bucket": {
                "name": bucket,
                "ownerIdentity": {"principalId": "A3NL1KOZZKExample"},
                "arn": f"arn:aws:s3:::{bucket}",
            },
            "object": obj,
        },
    }


def event(*records: dict[str, Any]) -> str:
    return json.dumps({"Records": list(records)})


PUT = event(record("videos/clip.mp4"))

MULTIPART = event(
    record(
        "big/feature.mov",
        event="ObjectCreated:CompleteMultipartUpload",
        size=5368709120,
        etag="a5f2c3e7b1d94f0e8c6b2a1d3e4f5a6b-641",
    )
)

TEST_EVENT = json.dumps(
    {
        "Service": "Amazon S3",
        "Event": "s3:TestEvent",
        "Time": "2026-11-22T08:59:59.000Z",
        "Bucket": "media-input",
        "RequestId": "5582815E1AEA5ADF",
        "HostId": "8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR+YstdA6Knx4Ip8EXAMPLE",
    }
)


def sns_wrap(body: str) -> str:
    return json.dumps(
        {
            "Type": "Notification",
            "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
            "TopicArn": "arn:aws:sns:region-1:ACCOUNT:uploads",
            "Subject": "Amazon S3 Notification",
            "Message": body,
            "Timestamp": "2026-11-22T09:00:00.100Z",
            "SignatureVersion": "1",
            "Signature": "EXAMPLE",
            "SigningCertURL": "https://sns.example/cert.pem",
            "UnsubscribeURL": "https://sns.example/unsubscribe",
        }
    )


REGISTRY = ProcessorRegistry.load()


def upload_kind(key: str) -> str | None:
    """The kind the installed kinds queue an upload called ``key`` as (the service's rule)."""
    return REGISTRY.kind_for(key, upload=True)


def video_uploads(body: str) -> list[S3ObjectEvent]:
    """The uploads in ``body`` queued as transcode tasks."""
    return [ev for ev, kind in uploads(body, upload_kind) if kind == "transcode"]


# -- parsing ----------------------------------------------------------------------


def test_plain_put() -> None:
    [ev] = parse_message(PUT)
    assert (ev.bucket, ev.key, ev.size) == ("media-input", "videos/clip.mp4", 1048576)
    assert ev.etag == "d41d8cd98f00b204e9800998ecf8427e"
    assert ev.sequencer == "0055AED6DCD90281E5"
    assert ev.event_name == "ObjectCreated:Put"
    assert ev.event_time == "2026-11-22T09:00:00.000Z"
    assert upload_kind(ev.key) == "transcode"


def test_multipart_complete_keeps_multipart_etag() -> None:
    [ev] = parse_message(MULTIPART)
    assert ev.event_name == "ObjectCreated:CompleteMultipartUpload"
    assert ev.key == "big/feature.mov"
    assert ev.size == 5368709120
    assert ev.etag.endswith("-641")


def test_test_event_is_ignored() -> None:
    assert parse_message(TEST_EVENT) == []
    assert parse_message(sns_wrap(TEST_EVENT)) == []


def test_sns_wrapped_event() -> None:
    assert parse_message(sns_wrap(PUT)) == parse_message(PUT)


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        ("my+holiday+video.mp4", "my holiday video.mp4"),
        ("my%20holiday%20video.mp4", "my holiday video.mp4"),
        ("a%2Bb%26c%3D1.mkv", "a+b&c=1.mkv"),
        ("%E8%A7%86%E9%A2%91/%E6%B5%8B%E8%AF%95+%E4%B8%80.mp4", "视频/测试 一.mp4"),
        ("folder/%E4%B8%AD%E6%96%87%E6%96%87%E4%BB%B6%E5%90%8D.MOV", "folder/中文文件名.MOV"),
    ],
)
def test_keys_are_url_decoded(raw: str, decoded: str) -> None:
    [ev] = parse_message(event(record(raw)))
    assert ev.key == decoded
    assert upload_kind(ev.key) == "transcode"


def test_only_object_created_records() -> None:
    body = event(
        record("gone.mp4", event="ObjectRemoved:Delete", etag=None),
        record("restored.mp4", event="ObjectRestore:Completed"),
        record("copied.mp4", event="ObjectCreated:Copy"),
    )
    assert [ev.key for ev in parse_message(body)] == ["copied.mp4"]


def test_non_video_is_parsed_but_not_an_upload() -> None:
    body = event(record("docs/readme.txt"), record("photo.JPG"), record("ok.WEBM"))
    assert [upload_kind(ev.key) for ev in parse_message(body)] == [None, None, "transcode"]
    assert [ev.key for ev in video_uploads(body)] == ["ok.WEBM"]


def test_each_upload_is_queued_as_the_kind_that_takes_it() -> None:
    body = event(
        record("clips/a.mov"), record("papers/report.PDF"), record("scan.png"), record("x.txt")
    )
    assert [(ev.key, kind) for ev, kind in uploads(body, upload_kind)] == [
        ("clips/a.mov", "transcode"),
        ("papers/report.PDF", "docparse"),
    ]


def test_staged_outputs_are_no_uploads() -> None:
    # a bucket used for inputs and outputs sees the workers' staging writes too
    staged = ".conveyor-staging/01task/01stamp-1/clips/a/mp4_standard.mp4"
    body = event(record(staged), record("clips/b.mp4"))
    assert [ev.key for ev in video_uploads(body)] == ["clips/b.mp4"]


def test_quoted_etag_is_stripped() -> None:
    [ev] = parse_message(event(record("a.mp4", etag='"abc"')))
    assert ev.etag == "abc"


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        "[1, 2]",
        json.dumps({"hello": "world"}),
        json.dumps({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put"}]}),
        event({**record("x.mp4"), "s3": {"bucket": {"name": "b"}, "object": {}}}),
        json.dumps({"Type": "Notification", "Message": {"Records": []}}),
    ],
)
def test_malformed(body: str) -> None:
    with pytest.raises(MalformedEvent):
        parse_message(body)


# -- dedup --------------------------------------------------------------------------


def test_dedup_key_matches_the_watcher_and_explicit_submit() -> None:
    [ev] = parse_message(PUT)
    info = ObjectInfo(
        bucket="media-input",
        key="videos/clip.mp4",
        size=1,
        etag="d41d8cd98f00b204e9800998ecf8427e",
    )
    assert ev.dedup_key == upload_dedup_key(info)


def test_dedup_key_same_however_seen() -> None:
    assert parse_message(PUT)[0].dedup_key == parse_message(sns_wrap(PUT))[0].dedup_key
    encoded = event(record("a+b.mp4"))
    spaced = event(record("a%20b.mp4"))
    assert parse_message(encoded)[0].dedup_key == parse_message(spaced)[0].dedup_key


def test_dedup_key_changes_with_content() -> None:
    a = parse_message(event(record("a.mp4", etag="111")))[0]
    b = parse_message(event(record("a.mp4", etag="222")))[0]
    assert a.dedup_key != b.dedup_key


def test_dedup_falls_back_to_sequencer() -> None:
    a = parse_message(event(record("a.mp4", etag=None, sequencer="001")))[0]
    b = parse_message(event(record("a.mp4", etag=None, sequencer="002")))[0]
    again = parse_message(event(record("a.mp4", etag=None, sequencer="001")))[0]
    assert a.dedup_key != b.dedup_key
    assert a.dedup_key == again.dedup_key


def test_duplicate_records_in_one_message_are_one_upload() -> None:
    assert len(video_uploads(event(record("a.mp4"), record("a.mp4")))) == 1


# -- the consumer -------------------------------------------------------------------


@dataclass
class FakeTask:
    id: str


@dataclass
class FakeResult:
    task: FakeTask
    created: bool


@dataclass
class FakeService:
    """Records submits; idempotent on idempotency_key like the real backends."""

    fail_keys: set[str] = field(default_factory=set)
    missing_keys: set[str] = field(default_factory=set)
    calls: list[tuple[SubmitRequest, Trigger]] = field(default_factory=list)
    tasks: dict[str, str] = field(default_factory=dict)

    def upload_kind(self, key: str, content_type: str | None = None) -> str | None:
        return upload_kind(key)

    def submit(
        self, req: SubmitRequest, *, trigger: Trigger, submitted_by: str | None = None
    ) -> FakeResult:
        self.calls.append((req, trigger))
        assert req.input_key is not None and req.idempotency_key is not None
        if req.input_key in self.fail_keys:
            raise RuntimeError("backend unavailable")
        if req.input_key in self.missing_keys:
            raise ObjectNotFound(f"input object not found: {req.input_key}")
        existing = self.tasks.get(req.idempotency_key)
        if existing is not None:
            return FakeResult(FakeTask(existing), created=False)
        tid = f"t{len(self.tasks) + 1}"
        self.tasks[req.idempotency_key] = tid
        return FakeResult(FakeTask(tid), created=True)


class FakeSQS:
    """Just enough of an SQS client: receive (recording its arguments) and batch delete."""

    def __init__(self, bodies: list[str]) -> None:
        self.messages = [
            {"MessageId": f"m{i}", "ReceiptHandle": f"rh{i}", "Body": b}
            for i, b in enumerate(bodies)
        ]
        self.receives: list[dict[str, Any]] = []
        self.deleted: list[str] = []
        self.received = threading.Event()

    def receive_message(self, **kwargs: Any) -> dict[str, Any]:
        self.receives.append(kwargs)
        self.received.set()
        msgs, self.messages = self.messages[: kwargs["MaxNumberOfMessages"]], []
        return {"Messages": msgs} if msgs else {}

    def delete_message_batch(self, **kwargs: Any) -> dict[str, Any]:
        entries = kwargs["Entries"]
        self.deleted += [e["ReceiptHandle"] for e in entries]
        return {"Successful": [{"Id": e["Id"]} for e in entries], "Failed": []}


def consumer(svc: FakeService, sqs: FakeSQS, **kw: Any) -> S3EventConsumer:
    return S3EventConsumer(cast(ConveyorService, svc), "https://queue.example/q", sqs, **kw)


def test_consumer_submits_and_deletes() -> None:
    bodies = [
        PUT,
        MULTIPART,
        TEST_EVENT,
        sns_wrap(event(record("%E8%A7%86%E9%A2%91.mp4"))),
        event(record("notes.txt")),
        "garbage",
        PUT,  # the same upload delivered twice
    ]
    svc, sqs = FakeService(), FakeSQS(bodies)
    c = consumer(svc, sqs)
    assert c.poll_once() == len(bodies)
    assert sqs.receives[0]["WaitTimeSeconds"] == 20
    assert sqs.receives[0]["QueueUrl"] == "https://queue.example/q"
    assert sorted(sqs.deleted) == sorted(f"rh{i}" for i in range(len(bodies)))
    keys = [req.input_key for req, _ in svc.calls]
    assert keys == ["videos/clip.mp4", "big/feature.mov", "视频.mp4", "videos/clip.mp4"]
    for req, trigger in svc.calls:
        assert trigger is Trigger.UPLOAD
        assert req.kind == "transcode"
        assert req.input_bucket == "media-input"
        assert req.idempotency_key is not None and req.idempotency_key.startswith("upload:")
    assert len(svc.tasks) == 3
    assert c.stats.submitted == 3
    assert c.stats.duplicates == 1
    assert c.stats.skipped == 2  # notes.txt and the garbage body


def test_consumer_leaves_failed_messages_for_redelivery() -> None:
    body = event(record("ok.mp4"), record("boom.mp4"))
    svc, sqs = FakeService(fail_keys={"boom.mp4"}), FakeSQS([body, PUT])
    c = consumer(svc, sqs)
    assert c.poll_once() == 1
    assert sqs.deleted == ["rh1"]
    assert c.stats.failed == 1
    # redelivered after the outage: the part already queued is not queued again
    svc.fail_keys.clear()
    sqs.messages = [{"MessageId": "m0", "ReceiptHandle": "rh0-again", "Body": body}]
    assert c.poll_once() == 1
    assert len(svc.tasks) == 3  # ok.mp4, videos/clip.mp4, boom.mp4


def test_consumer_drops_uploads_that_are_already_gone() -> None:
    svc, sqs = FakeService(missing_keys={"videos/clip.mp4"}), FakeSQS([PUT])
    c = consumer(svc, sqs)
    assert c.poll_once() == 1
    assert sqs.deleted == ["rh0"]
    assert c.stats.skipped == 1


def test_consumer_thread_starts_and_stops() -> None:
    svc, sqs = FakeService(), FakeSQS([PUT])
    c = consumer(svc, sqs, wait_time_s=0)
    c.start()
    try:
        assert sqs.received.wait(5)
        for _ in range(50):
            if svc.tasks:
                break
            threading.Event().wait(0.05)
    finally:
        c.stop(timeout=5)
    assert len(svc.tasks) == 1
    # an empty queue with no long poll is not a busy loop
    assert len(sqs.receives) < 10


def test_consumer_rejects_bad_wait_time() -> None:
    with pytest.raises(ValueError):
        consumer(FakeService(), FakeSQS([]), wait_time_s=21)
