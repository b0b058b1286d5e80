"""Upload trigger for AWS: S3 event notifications delivered to an SQS queue.

The input bucket sends ``s3:ObjectCreated:*`` notifications to a queue
(``deploy/aws/conveyor.yaml`` or ``conveyor aws init`` sets that up);
:class:`S3EventConsumer` long-polls that queue and turns every new upload a
kind takes into a task of that kind (``ConveyorService.upload_kind``: a video a
transcode, a PDF a docparse task, by the kinds' processors).

The parsing is pure and apart from the loop so it can be tested on real
notification samples:

* a message body is an S3 event (``{"Records": [...]}``), the same event
  wrapped by SNS (``{"Type": "Notification", "Message": "<json>"}``), or the
  ``s3:TestEvent`` S3 sends when a notification is configured (ignored);
* object keys arrive URL-encoded with ``+`` for a space and are decoded with
  :func:`urllib.parse.unquote_plus`;
* only ``ObjectCreated:*`` records count, and only keys a kind takes become
  tasks (:func:`uploads`).

One upload is one task however it was seen: the idempotency key is
:func:`conveyor.service.upload_dedup_key` of bucket + key + ETag, the key the
polling watcher and an explicit submit use too (an ETag is the same in a
listing and in an event once its quotes are stripped).  A record without an
ETag falls back to its sequencer, which S3 makes unique per object version.

Delivery is at least once, so the consumer deletes a message only once
everything in it has been submitted (or deliberately skipped: no kind takes it,
malformed, a key or bucket the service refuses, an object already gone);
a message whose submit failed for any other reason is left on the queue and
comes back after its visibility timeout, then to the dead-letter queue.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from conveyor.errors import InvalidRequest, NotFound
from conveyor.models import Trigger
from conveyor.service import ConveyorService, SubmitRequest, upload_dedup_key
from conveyor.storage import ObjectInfo
from conveyor.storage.base import is_staging_key

log = logging.getLogger("conveyor.trigger.s3")

WAIT_TIME_S = 20  # SQS long polling: the maximum an SQS receive may wait
MAX_MESSAGES = 10  # the most one SQS receive may return
ERROR_BACKOFF_S = 5.0  # pause after a failed receive, so an outage is not a busy loop


class MalformedEvent(ValueError):
    """A message body that is neither an S3 event, an SNS-wrapped one, nor a test event."""


@dataclass(frozen=True)
class S3ObjectEvent:
    """One ``ObjectCreated`` record of an S3 event notification, its key decoded."""

    bucket: str
    key: str
    size: int
    etag: str
    sequencer: str
    event_name: str
    event_time: str = ""

    def object_info(self) -> ObjectInfo:
        etag = self.etag or (f"sequencer:{self.sequencer}" if self.sequencer else "")
        return ObjectInfo(bucket=self.bucket, key=self.key, size=self.size, etag=etag)

    @property
    def dedup_key(self) -> str:
        return upload_dedup_key(self.object_info())


def _load(body: str | bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (TypeError, ValueError) as exc:
        raise MalformedEvent(f"message body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise MalformedEvent("message body is not a JSON object")
    return doc


def _unwrap(body: str | bytes) -> dict[str, Any]:
    """The S3 event inside ``body``, unwrapping an SNS notification if there is one."""
    doc = _load(body)
    if doc.get("Type") == "Notification" and "Message" in doc:
        inner = doc["Message"]
        if not isinstance(inner, str):
            raise MalformedEvent("SNS notification whose Message is not a string")
        doc = _load(inner)
    return doc


def is_test_event(doc: dict[str, Any]) -> bool:
    return doc.get("Event") == "s3:TestEvent"


def parse_record(rec: Any) -> S3ObjectEvent | None:
    """One record as an :class:`S3ObjectEvent`, or None when it is not an object creation."""
    if not isinstance(rec, dict):
        raise MalformedEvent("event record is not a JSON object")
    name = str(rec.get("eventName", ""))
    source = rec.get("eventSource")
    if source not in (None, "aws:s3") or not name.startswith("ObjectCreated:"):
        return None
    s3 = rec.get("s3")
    if not isinstance(s3, dict):
        raise MalformedEvent("ObjectCreated record without an s3 section")
    bucket = s3.get("bucket") or {}
    obj = s3.get("object") or {}
    if not isinstance(bucket, dict) or not isinstance(obj, dict):
        raise MalformedEvent("ObjectCreated record with a malformed s3 section")
    bucket_name, raw_key = bucket.get("name"), obj.get("key")
    if not isinstance(bucket_name, str) or not bucket_name:
        raise MalformedEvent("ObjectCreated record without a bucket name")
    if not isinstance(raw_key, str) or not raw_key:
        raise MalformedEvent("ObjectCreated record without an object key")
    try:
        size = int(obj.get("size") or 0)
    except (TypeError, ValueError):
        raise MalformedEvent(f"object size {obj.get('size')!r} is not a number") from None
    return S3ObjectEvent(
        bucket=bucket_name,
        key=unquote_plus(raw_key),
        size=size,
        etag=str(obj.get("eTag") or "").strip('"'),
        sequencer=str(obj.get("sequencer") or ""),
        event_name=name,
        event_time=str(rec.get("eventTime") or ""),
    )


def parse_message(body: str | bytes) -> list[S3ObjectEvent]:
    """Every ``ObjectCreated`` record in one SQS message body (``[]`` for a test event).

    Raises :class:`MalformedEvent` for a body that is not an S3 notification.
    Every key is kept: :func:`uploads` keeps those a kind takes.
    """
    doc = _unwrap(body)
    if is_test_event(doc):
        return []
    records = doc.get("Records")
    if not isinstance(records, list):
        raise MalformedEvent("not an S3 event notification: no Records list")
    out: list[S3ObjectEvent] = []
    for rec in records:
        ev = parse_record(rec)
        if ev is not None:
            out.append(ev)
    return out


def uploads(
    body: str | bytes, kind_for: Callable[[str], str | None]
) -> list[tuple[S3ObjectEvent, str]]:
    """The uploads in a message body that should become tasks, one per dedup key, each
    with its kind (``kind_for``: ``ConveyorService.upload_kind``; None: not a task)."""
    seen: set[str] = set()
    out: list[tuple[S3ObjectEvent, str]] = []
    for ev in parse_message(body):
        # staged outputs (conveyor.outputs) are no uploads, even in a shared bucket
        if is_staging_key(ev.key) or ev.dedup_key in seen:
            continue
        kind = kind_for(ev.key)
        if kind is None:
            continue
        seen.add(ev.dedup_key)
        out.append((ev, kind))
    return out


@dataclass
class ConsumerStats:
    received: int = 0
    deleted: int = 0
    submitted: int = 0
    duplicates: int = 0
    skipped: int = 0
    failed: int = 0


class S3EventConsumer:
    """Long-polls the notification queue and submits a task per upload a kind takes.

    ``sqs_client`` is a boto3 SQS client (any endpoint).  ``poll_once`` is one
    receive (waiting up to ``wait_time_s`` for a message, so an idle consumer
    makes three calls a minute); ``start``/``stop`` run it on a thread.
    """

    def __init__(
        self,
        service: ConveyorService,
        queue_url: str,
        sqs_client: Any,
        *,
        wait_time_s: int = WAIT_TIME_S,
        max_messages: int = MAX_MESSAGES,
        visibility_timeout_s: int | None = None,
        error_backoff_s: float = ERROR_BACKOFF_S,
    ) -> None:
        if not 0 <= wait_time_s <= WAIT_TIME_S:
            raise ValueError(f"wait_time_s must be 0..{WAIT_TIME_S}")
        if not 1 <= max_messages <= MAX_MESSAGES:
            raise ValueError(f"max_messages must be 1..{MAX_MESSAGES}")
        self.service = service
        self.queue_url = queue_url
        self.sqs = sqs_client
        self.wait_time_s = wait_time_s
        self.max_messages = max_messages
        self.visibility_timeout_s = visibility_timeout_s
        self.error_backoff_s = error_backoff_s
        self.stats = ConsumerStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one message -----------------------------------------------------------
    def handle_body(self, body: str | bytes) -> bool:
        """Submit the uploads in one message; True when the message may be deleted."""
        try:
            events = parse_message(body)
        except MalformedEvent as exc:
            log.warning("Dropping a message that is not an S3 event (%s): %.200r", exc, body)
            self.stats.skipped += 1
            return True
        ok = True
        seen: set[str] = set()
        for ev in events:
            kind = self.service.upload_kind(ev.key)
            if kind is None:
                log.debug("Skipping upload %s/%s: no kind takes it", ev.bucket, ev.key)
                self.stats.skipped += 1
                continue
            if ev.dedup_key in seen:
                continue
            seen.add(ev.dedup_key)
            ok = self._submit(ev, kind) and ok
        return ok

    def _submit(self, ev: S3ObjectEvent, kind: str) -> bool:
        try:
            res = self.service.submit(
                SubmitRequest(
                    kind=kind,
                    input_bucket=ev.bucket,
                    input_key=ev.key,
                    idempotency_key=ev.dedup_key,
                ),
                trigger=Trigger.UPLOAD,
                submitted_by="s3-event",
            )
        except (InvalidRequest, NotFound) as exc:
            # will never succeed: a key or bucket we refuse, an object deleted since
            log.warning("Upload %s/%s not queued: %s", ev.bucket, ev.key, exc.message)
            self.stats.skipped += 1
            return True
        except Exception:
            log.exception(
                "Upload %s/%s not queued; the message will be redelivered", ev.bucket, ev.key
            )
            self.stats.failed += 1
            return False
        if res.created:
            self.stats.submitted += 1
            log.info("Upload event: %s/%s -> task %s", ev.bucket, ev.key, res.task.id)
        else:
            self.stats.duplicates += 1
            log.debug("Upload %s/%s already queued as task %s", ev.bucket, ev.key, res.task.id)
        return True

    # -- the queue -------------------------------------------------------------
    def poll_once(self) -> int:
        """One long-poll receive; returns how many messages it handled and deleted."""
        kwargs: dict[str, Any] = {
            "QueueUrl": self.queue_url,
            "MaxNumberOfMessages": self.max_messages,
            "WaitTimeSeconds": self.wait_time_s,
        }
        if self.visibility_timeout_s is not None:
            kwargs["VisibilityTimeout"] = self.visibility_timeout_s
        resp = self.sqs.receive_message(**kwargs)
        messages: list[dict[str, Any]] = resp.get("Messages") or []
        self.stats.received += len(messages)
        done: list[dict[str, str]] = []
        for i, msg in enumerate(messages):
            if self.handle_body(msg.get("Body", "")):
                done.append({"Id": str(i), "ReceiptHandle": msg["ReceiptHandle"]})
        if done:
            out = self.sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=done)
            failed = out.get("Failed") or []
            for f in failed:
                log.warning("Could not delete a handled message: %s", f.get("Message"))
            self.stats.deleted += len(done) - len(failed)
            return len(done) - len(failed)
        return 0

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="conveyor-s3-events", daemon=True)
        self._thread.start()
        log.info("Upload trigger reading S3 events from %s", self.queue_url)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                received = self.stats.received
                self.poll_once()
                if self.wait_time_s == 0 and self.stats.received == received:
                    self._stop.wait(1.0)  # no long poll to wait in: never spin on an empty queue
            except Exception:
                log.exception("reading S3 events failed; will retry")
                self._stop.wait(self.error_backoff_s)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop; a receive in flight is not waited for (its messages come back
        after their visibility timeout and submits are idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None
