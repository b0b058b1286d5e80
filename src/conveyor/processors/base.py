"""The processor interface: one per task kind, unaware of backend and face.

A processor validates its own parameters (at submit time, so bad requests
fail before they are queued), says what this host can do for it (probed at
worker start), and runs one task inside a context that hands it a private
temp dir, storage, progress and log callbacks, and a cancellation event.

Outputs go through ``ctx.outputs`` (a ``conveyor.outputs.Stager``), never
straight to their final keys: they are staged under the attempt's own prefix
and become visible only once the task is completed under a lease the attempt
still holds.  ``ctx.check_lease()`` raises ``LeaseLost`` as soon as the worker
knows the lease is gone, so a processor stops before its next side effect.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

from conveyor.errors import InputRejected, ObjectNotFound, ProcessorError
from conveyor.models import InputRef, OutputFile, Task
from conveyor.outputs import Stager, attempt_staging
from conveyor.storage.base import BlobStore


def _lease_held() -> None:
    """A context made outside a worker (a test, a one-off run) has no lease to lose."""


@dataclass
class ProcessorContext:
    task: Task
    workdir: Path
    storage: BlobStore
    output_bucket: str
    report_progress: Callable[[float, str, str], None]
    log: Callable[[str], None]
    cancel_event: threading.Event = field(default_factory=threading.Event)
    gpus: list[str] = field(default_factory=list)
    timeout_s: float | None = None
    # (line, stream) for processors that relay a job's stdout/stderr; ``log`` otherwise
    log_stream: Callable[[str, str], None] | None = None
    worker_id: str = ""
    attempt: int = 0
    # raises LeaseLost once this attempt's lease is known to be gone
    check_lease: Callable[[], None] = _lease_held
    # the attempt's writes (staged; see conveyor.outputs); made from the fields above
    outputs: Stager | None = None

    def __post_init__(self) -> None:
        if self.outputs is None:
            self.outputs = Stager(
                self.storage,
                self.output_bucket,
                attempt_staging(self.task.id, self.attempt or self.task.attempts),
                self.check_lease,
            )

    @property
    def stager(self) -> Stager:
        assert self.outputs is not None  # set in __post_init__
        return self.outputs


class Processor(ABC):
    kind: ClassVar[str]
    params_model: ClassVar[type[BaseModel]]
    # a kind that runs code the caller supplies (container): submitting one needs the
    # tasks:run_code permission, which the service checks at submit
    runs_caller_code: ClassVar[bool] = False

    def __init__(self, settings: Any = None) -> None:
        self.settings = settings

    def validate(self, params: dict[str, Any], input_ref: InputRef | None) -> dict[str, Any]:
        """Return normalised params or raise ``InvalidParams`` naming the problem."""
        from pydantic import ValidationError

        from conveyor.errors import InvalidParams

        try:
            model = self.params_model.model_validate(params)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "params"
            raise InvalidParams(f"invalid {self.kind} parameter {where}: {first['msg']}") from exc
        return model.model_dump(mode="json")

    def requires_input(self) -> bool:
        return True

    # -- what a task touches, for the service's access rules (validated params) ----------
    def objects_read(self, params: dict[str, Any]) -> list[InputRef]:
        """Bucket objects a task reads besides its input; the submitter must be allowed to
        read each.  By convention a param ``inputs`` lists ``{"bucket", "key"}`` objects."""
        refs: list[InputRef] = []
        for item in params.get("inputs") or []:
            if isinstance(item, dict) and {"bucket", "key"} <= item.keys():
                refs.append(InputRef(bucket=str(item["bucket"]), key=str(item["key"])))
        return refs

    def output_prefix(self, params: dict[str, Any]) -> str | None:
        """The key prefix in the output bucket the caller chose (``output_prefix``), if any."""
        prefix = params.get("output_prefix")
        return prefix if isinstance(prefix, str) and prefix else None

    def secrets_requested(self, params: dict[str, Any]) -> list[str]:
        """Names of worker secrets the task asks for (``secrets``): each must be granted."""
        return [str(s) for s in params.get("secrets") or []]

    def gpus_needed(self, params: dict[str, Any]) -> int:
        """GPUs a task with these (validated) params needs on one worker: ``Task.gpus``."""
        return 0

    def gpu_devices(self) -> list[str]:
        """The GPUs this host gives the kind's tasks; the worker claims by how many are free."""
        return []

    def probe(self) -> dict[str, Any] | None:
        """What this host offers for the kind, or None when it cannot run it."""
        return {}

    @abstractmethod
    def run(self, ctx: ProcessorContext) -> list[OutputFile]:
        """Do the work; raise ``ProcessorError`` (or a subclass) on failure."""


@contextmanager
def publishing(ctx: ProcessorContext, published: list[OutputFile]) -> Iterator[None]:
    """Stage outputs all or nothing: when an upload fails part way (or the task is
    cancelled, or the lease is lost), what this attempt staged is removed, and only
    that; nothing was visible yet.  An OSError is a retryable upload failure."""
    try:
        yield
    except BaseException as exc:
        try:
            ctx.stager.discard([o.staged_key for o in published if o.staged_key])
        except Exception:
            logging.getLogger(__name__).exception("could not remove staged outputs")
        if isinstance(exc, OSError):
            raise ProcessorError(f"upload failed: {exc}", retryable=True) from exc
        raise


def download_input(ctx: ProcessorContext, ref: InputRef, dest: Path) -> Path:
    """The task's input into ``dest``: a missing object is the submitter's mistake (not
    retried), a storage error may pass (retried)."""
    try:
        ctx.storage.get_file(ref.bucket, ref.key, dest)
    except ObjectNotFound as exc:
        raise InputRejected(f"input object not found: {ref.bucket}/{ref.key}") from exc
    except OSError as exc:
        raise ProcessorError(f"could not download the input: {exc}", retryable=True) from exc
    return dest
