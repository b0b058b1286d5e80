"""Wiring: build the service and the background parts a process runs.

``conveyor up`` runs everything in one process; ``serve`` runs the API,
reaper and upload trigger; ``worker`` runs a worker alone.  All of them are
assembled here so the faces stay thin.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from urllib.parse import urlparse

from conveyor.backends import open_backend
from conveyor.config import Settings
from conveyor.events.dispatcher import Dispatcher
from conveyor.processors import ProcessorRegistry
from conveyor.service import ConveyorService
from conveyor.storage import open_storage
from conveyor.triggers.s3_events import S3EventConsumer
from conveyor.triggers.watcher import UploadWatcher
from conveyor.worker.loop import Worker
from conveyor.worker.reaper import Reaper

log = logging.getLogger("conveyor")


def build_service(settings: Settings) -> ConveyorService:
    backend = open_backend(settings.backend_url)
    storage = open_storage(settings.storage_url)
    registry = ProcessorRegistry.load(settings)
    if hasattr(storage, "bucket_dir"):
        for bucket in (settings.input_bucket, settings.output_bucket):
            storage.bucket_dir(bucket)
    backend.backoff_base = settings.retry_backoff_base
    return ConveyorService(settings, backend, storage, registry)


def local_worker(
    service: ConveyorService,
    *,
    worker_id: str | None = None,
    concurrency: int | None = None,
) -> Worker:
    """A worker on the service's own engine and store: besides running tasks, it makes
    their outputs visible and sweeps what crashed attempts left (``store``)."""
    return Worker(
        service.settings,
        service.backend,
        service.storage,
        service.registry,
        store=service.backend,
        worker_id=worker_id,
        concurrency=concurrency,
    )


def _upload_trigger(
    settings: Settings, service: ConveyorService
) -> UploadWatcher | S3EventConsumer:
    """Bucket notifications when configured (no listing cost), else polling the bucket."""
    if not settings.s3_events_queue_url:
        return UploadWatcher(service)
    from conveyor.backends.aws.resources import sqs_client

    region = settings.aws_region or _region_of(settings.s3_events_queue_url)
    endpoint = os.environ.get("AWS_ENDPOINT_URL_SQS") or os.environ.get("AWS_ENDPOINT_URL")
    return S3EventConsumer(service, settings.s3_events_queue_url, sqs_client(region, endpoint))


def _region_of(queue_url: str) -> str:
    """``https://sqs.<region>.amazonaws.com/...`` names its region."""
    host = urlparse(queue_url).hostname or ""
    parts = host.split(".")
    if len(parts) >= 3 and parts[0] == "sqs":
        return parts[1]
    raise ValueError(f"set AWS_REGION: cannot tell the region of {queue_url!r}")


@dataclass
class Runtime:
    service: ConveyorService
    worker: Worker | None = None
    watcher: UploadWatcher | S3EventConsumer | None = None
    reaper: Reaper | None = None
    dispatcher: Dispatcher | None = None  # events out (docs/events.md)
    _started: bool = field(default=False)

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        with_worker: bool,
        with_trigger: bool,
        concurrency: int | None = None,
    ) -> Runtime:
        service = build_service(settings)
        rt = cls(service=service)
        if with_worker:
            rt.worker = local_worker(service, concurrency=concurrency)
        else:
            rt.reaper = Reaper(
                service.backend,
                settings.reap_interval,
                service.storage,
                settings.output_bucket,
                store=service.backend,
            )
        if with_trigger and settings.trigger_enabled:
            rt.watcher = _upload_trigger(settings, service)
        events = service.events
        if events.available:  # the engine writes progress events as this says
            events.store.set_progress_interval(events.settings.progress_s)
        if events.settings.dispatch:
            if events.available:
                rt.dispatcher = Dispatcher(events.store, events.settings, policy=events.policy)
            else:
                log.info("events: no dispatcher, this engine keeps no events")
        return rt

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        for part in (self.reaper, self.worker, self.watcher, self.dispatcher):
            if part is not None:
                part.start()

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        if self.watcher is not None:
            self.watcher.stop()
        if self.worker is not None:
            self.worker.stop()
        if self.reaper is not None:
            self.reaper.stop()
        if self.dispatcher is not None:
            self.dispatcher.stop()
        self.service.close()
