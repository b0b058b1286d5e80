"""Upload trigger for stores without event notifications: poll the input bucket.

An object becomes a task of the kind that takes it (``ConveyorService.upload_kind``:
a video a transcode, a PDF a docparse task, by the kinds' processors); an object no
kind takes is skipped.  It becomes a task only once it has looked the same (size and etag)
on two scans ``settle`` seconds apart, so a file still being copied into
the folder is not picked up half-way.  The dedup key is bucket + key +
etag, so one upload is one task even when it is seen twice or the watcher
restarts; replacing the file with new content is a new upload.
"""

from __future__ import annotations

import logging
import threading
import time

from conveyor.errors import ConveyorError
from conveyor.models import Trigger
from conveyor.service import ConveyorService, SubmitRequest, upload_dedup_key
from conveyor.storage import ObjectInfo

log = logging.getLogger("conveyor.trigger")


class UploadWatcher:
    def __init__(
        self,
        service: ConveyorService,
        *,
        bucket: str | None = None,
        interval: float | None = None,
        settle: float | None = None,
    ) -> None:
        self.service = service
        self.bucket = bucket or service.settings.input_bucket
        self.interval = service.settings.trigger_interval if interval is None else interval
        self.settle = service.settings.trigger_settle_seconds if settle is None else settle
        self._candidates: dict[str, tuple[str, float]] = {}  # key -> (etag, first seen)
        self._done: dict[str, str] = {}  # key -> etag submitted (or skipped)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def scan_once(self) -> int:
        """One pass over the bucket; returns how many tasks it created."""
        now = time.monotonic()
        created = 0
        present: set[str] = set()
        for obj in self.service.list_files(self.bucket):
            present.add(obj.key)
            if self._done.get(obj.key) == obj.etag:
                continue
            kind = self.service.upload_kind(obj.key, obj.content_type)
            if kind is None:
                log.debug("Skipping upload %s/%s: no kind takes it", obj.bucket, obj.key)
                self._done[obj.key] = obj.etag
                continue
            seen = self._candidates.get(obj.key)
            if seen is None or seen[0] != obj.etag:
                self._candidates[obj.key] = (obj.etag, now)
                if self.settle > 0:
                    continue
            elif now - seen[1] < self.settle:
                continue
            if self._submit(obj, kind):
                created += 1
            self._done[obj.key] = obj.etag
            self._candidates.pop(obj.key, None)
        for gone in set(self._done) - present:
            self._done.pop(gone, None)
        for gone in set(self._candidates) - present:
            self._candidates.pop(gone, None)
        return created

    def _submit(self, obj: ObjectInfo, kind: str) -> bool:
        try:
            res = self.service.submit(
                SubmitRequest(
                    kind=kind,
                    input_bucket=obj.bucket,
                    input_key=obj.key,
                    idempotency_key=upload_dedup_key(obj),
                ),
                trigger=Trigger.UPLOAD,
                submitted_by="upload-trigger",
            )
        except ConveyorError as exc:
            log.warning("Upload %s/%s not queued: %s", obj.bucket, obj.key, exc.message)
            return False
        if res.created:
            log.info("Upload detected: %s/%s -> task %s", obj.bucket, obj.key, res.task.id)
        return res.created

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="conveyor-trigger", daemon=True)
        self._thread.start()
        log.info("Upload trigger watching bucket %r every %gs", self.bucket, self.interval)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.scan_once()
            except Exception:
                log.exception("upload scan failed; will retry")
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
