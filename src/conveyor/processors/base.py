"""The processor interface: one per task kind, unaware of backend and engine.

A processor validates its own parameters (at submit time, so bad requests
fail before they are queued), says what this host can do for it (probed at
worker start), and runs one task inside a context that hands it a private
temp dir, storage, progress and log callbacks, and a cancellation event.

Everything else the service, the faces and the upload triggers know about a
kind, they ask its processor through the hooks below (each has a default, so
a new kind declares only what it needs); core code never names a kind:

* what it accepts: ``suffixes``, ``content_types``, ``upload_suffixes`` and
  :meth:`Processor.accepts` (``conveyor submit FILE`` and the upload triggers
  pick a kind by them);
* its params (``params_model``, :meth:`~Processor.validate`), the defaults a submit
  gets (:meth:`~Processor.with_defaults`), the request fields that are its params
  (``request_fields``), and whether it is the kind a submit without one gets
  (``submit_default``);
* its settings (``settings_model``: a ``conveyor.config.KindSettings`` with its own
  env prefix), as ``self.config``;
* its console form (:meth:`~Processor.form`, :meth:`~Processor.params_from_form`),
  its labels in English and Simplified Chinese (``labels``), its pages
  (:meth:`~Processor.console_links`) and how a task is described
  (:meth:`~Processor.describe`);
* its gauges on ``/metrics`` (:meth:`~Processor.gauges`) and the routes it adds
  to the app (:meth:`~Processor.routers`).

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
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NoReturn

from pydantic import BaseModel

from conveyor.config import KindSettings
from conveyor.errors import InputRejected, ObjectNotFound, ProcessorError
from conveyor.models import InputRef, OutputFile, Task
from conveyor.outputs import Stager, attempt_staging
from conveyor.storage.base import BlobStore

if TYPE_CHECKING:
    from fastapi import APIRouter
    from prometheus_client.core import Metric


def _lease_held() -> None:
    """A context made outside a worker (a test, a one-off run) has no lease to lose."""


class ChildrenSpawned(Exception):
    """Raised by :meth:`ProcessorContext.spawn` once the task's children are stored:
    the worker neither completes nor fails the attempt (it was handed back, waiting for
    its children; the task runs again once they all completed, with ``children > 0``)."""

    def __init__(self, parent: Task) -> None:
        super().__init__(f"task {parent.id} waits for {parent.children} children")
        self.parent = parent


class _LazyFolder:
    """``ProcessorContext.workdir``: the folder is made (mode 0700) the first time a
    processor reads it, so a task whose processor needs no local files costs no mkdir
    and no rmtree; ``workdir_made`` says whether it was."""

    def __get__(self, obj: Any, objtype: Any = None) -> Path:
        if obj is None:
            raise AttributeError("workdir")
        path: Path = obj.__dict__["_workdir"]
        if not obj.__dict__.get("workdir_made"):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            obj.__dict__["workdir_made"] = True
        return path

    def __set__(self, obj: Any, value: Path) -> None:
        obj.__dict__["_workdir"] = value if isinstance(value, Path) else Path(value)
        obj.__dict__["workdir_made"] = False


@dataclass
class ProcessorContext:
    task: Task
    # a private folder for the task's files, made on first use (see _LazyFolder below)
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
    # stores children for this task under its lease and hands it back until they all
    # completed (WorkerQueue.spawn_children); None where nothing can spawn (see spawn)
    spawn_children: Callable[[list[Task]], Task] | None = None
    # this task's children as the queue has them (WorkerQueue.spawned)
    read_children: Callable[[], list[Task]] | None = None

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

    @property
    def workdir_made(self) -> bool:
        """Whether ``workdir`` was asked for (and so made)."""
        return bool(self.__dict__.get("workdir_made"))

    def spawn(self, children: list[Task]) -> NoReturn:
        """Split this task into ``children`` and wait for them: they are stored under
        this attempt's lease, the task is handed back (the attempt not counted) and runs
        again once every child completed, then with ``task.children > 0`` (its step after
        the children: read their outputs with ``spawned_outputs``).  A child failed for
        good fails the task; cancelling the task cancels them.  Never returns: raises
        :class:`ChildrenSpawned`, which the worker understands (let it through)."""
        if self.spawn_children is None:
            raise ProcessorError("this worker cannot spawn child tasks", retryable=False)
        self.check_lease()
        raise ChildrenSpawned(self.spawn_children(children))

    def spawned(self) -> list[Task]:
        """This task's children (after :meth:`spawn`, in the order given), with their
        outputs: what its run after them reads."""
        if self.read_children is None:
            raise ProcessorError("this worker cannot read child tasks", retryable=False)
        return self.read_children()


# installed after @dataclass wrote __init__ (which sets it through the descriptor)
setattr(ProcessorContext, "workdir", _LazyFolder())  # noqa: B010 - a descriptor, not a value


# -- what a kind shows on the console's add-task page ------------------------------------
@dataclass(frozen=True)
class Choice:
    """One option of a select or a set of checkboxes.  ``label`` and ``hint`` are keys of
    the console's catalogue (the processor's ``labels``), shown as ``text`` and
    ``hint_text`` when the catalogue has no such key."""

    value: str
    label: str = ""
    text: str = ""
    hint: str = ""
    hint_text: str = ""


@dataclass(frozen=True)
class FormField:
    """One input of a kind's fieldset on the add-task page.

    ``name`` is the input's name (unique on the page: start it with something of the
    kind's own), ``param`` the task parameter it fills; ``label``, ``placeholder`` and
    ``hint`` are catalogue keys.  ``widget``: ``text`` and ``number`` (the param is left
    out when empty), ``select`` (one value), ``checkboxes`` (a list; ``cards`` is the
    same with each choice's hint shown under it).  Consecutive ``inline`` fields share
    a row."""

    name: str
    param: str
    widget: Literal["text", "number", "select", "checkboxes", "cards"] = "text"
    label: str = ""
    choices: tuple[Choice, ...] = ()
    default: str | tuple[str, ...] = ""
    placeholder: str = ""
    hint: str = ""
    maxlength: int = 200
    inline: bool = False

    @property
    def multiple(self) -> bool:
        return self.widget in ("checkboxes", "cards")

    def initial(self) -> str | list[str]:
        if self.multiple:
            return list(self.default) if isinstance(self.default, tuple) else [self.default]
        return self.default if isinstance(self.default, str) else ",".join(self.default)


@dataclass(frozen=True)
class KindForm:
    """A kind's fieldset on the add-task page: its legend and hint (catalogue keys)."""

    legend: str
    fields: tuple[FormField, ...] = ()
    hint: str = ""


@dataclass(frozen=True)
class ConsoleLink:
    """A page of the kind's own in the console (its ``routers`` serve it), linked from the
    add-task page for callers with ``permission``."""

    path: str  # under the console's /admin
    label: str  # a catalogue key
    permission: str = "tasks:submit"


class Processor(ABC):
    kind: ClassVar[str]
    params_model: ClassVar[type[BaseModel]]
    # the kind's settings (conveyor.config.KindSettings: env CONVEYOR_<KIND>_*), loaded with
    # the service's and handed to the processor as ``self.config``; none by default
    settings_model: ClassVar[type[KindSettings]] = KindSettings
    # a kind that runs code the caller supplies (container): submitting one needs the
    # tasks:run_code permission, which the service checks at submit
    runs_caller_code: ClassVar[bool] = False

    # -- what it accepts: ``conveyor submit FILE`` and the upload triggers pick a kind by it
    # file suffixes (lower case, with the dot) and content types ("video/*" matches a family)
    suffixes: ClassVar[frozenset[str]] = frozenset()
    content_types: ClassVar[frozenset[str]] = frozenset()
    # the suffixes an upload to the input bucket is queued for (None: all of ``suffixes``)
    upload_suffixes: ClassVar[frozenset[str] | None] = None

    # -- submitting
    # the kind a submit without one gets (the transcoding API's body names none): one
    # installed kind says so
    submit_default: ClassVar[bool] = False
    # fields of the submit request that are this kind's params, given at the top level
    # (conveyor.service.SubmitRequest); any other kind refuses them
    request_fields: ClassVar[tuple[str, ...]] = ()

    # -- the console's words for it: {language: {key: text}}, English ("en") and Simplified
    # Chinese ("zh-CN"), merged into its catalogue; "kind.<kind>" names the kind
    labels: ClassVar[Mapping[str, Mapping[str, str]]] = {}

    def __init__(self, settings: Any = None) -> None:
        """``settings``: the service's (``conveyor.config.Settings``), which carry the
        kind's own; or any object with the kind's settings by key (tests), or None."""
        self.settings = settings
        self.config = self.settings_model.of(settings)

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

    # -- what it accepts -----------------------------------------------------------------
    def accepts(self, key: str, content_type: str | None = None, *, upload: bool = False) -> bool:
        """Whether an object called ``key`` (of ``content_type``, when known) is an input
        of this kind; ``upload``: one that arrived in the input bucket, queued without
        anyone choosing the kind."""
        suffix = PurePosixPath(key).suffix.lower()
        if upload:
            wanted = self.suffixes if self.upload_suffixes is None else self.upload_suffixes
            return bool(suffix) and suffix in wanted
        if suffix and suffix in self.suffixes:
            return True
        if content_type:
            ctype = content_type.split(";")[0].strip().lower()
            family = ctype.split("/")[0] + "/*"
            return ctype in self.content_types or family in self.content_types
        return False

    # -- submit time -----------------------------------------------------------------------
    def with_defaults(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` as submitted, with what the submitter left out filled in, before they
        are validated (raise ``InvalidRequest`` for a request that cannot be completed)."""
        return params

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

    @classmethod
    def gpus_in_params(cls, params: dict[str, Any]) -> int:
        """The same, read from params as stored, unvalidated: for records written before
        ``Task.gpus`` was a field (``conveyor.models.gpus_in_params``)."""
        return 0

    def gpu_devices(self) -> list[str]:
        """The GPUs this host gives the kind's tasks; the worker claims by how many are free."""
        return []

    def probe(self) -> dict[str, Any] | None:
        """What this host offers for the kind, or None when it cannot run it."""
        return {}

    # -- faces -------------------------------------------------------------------------------
    def form(self) -> KindForm | None:
        """The kind's fieldset on the console's add-task page; None keeps the kind off that
        page.  By default a kind that takes an input file is offered, with no fields."""
        return KindForm(legend=f"kind.{self.kind}") if self.requires_input() else None

    def params_from_form(self, values: Mapping[str, Sequence[str]]) -> dict[str, Any]:
        """The task params the add-task page's fields hold (``values``: every submitted
        input by name); the processor validates them as it does the API's."""
        form = self.form()
        params: dict[str, Any] = {}
        for f in form.fields if form is not None else ():
            got = [v.strip() for v in values.get(f.name, ()) if v.strip()]
            if f.multiple:
                params[f.param] = got
            elif got:
                params[f.param] = got[0]
        return params

    def console_links(self) -> list[ConsoleLink]:
        """Pages of the kind's own, linked from the add-task page."""
        return []

    def describe(self, task: Task) -> list[tuple[str, str]]:
        """What the console shows of a task of this kind beside its params: tags, each a
        catalogue key and the text shown without one."""
        return []

    def gauges(self, recent: Callable[[int], list[Task]]) -> list[Metric]:
        """The kind's own gauges on ``/metrics`` (Prometheus metric families, always
        declared); ``recent(n)`` reads its ``n`` newest completed tasks from the backend."""
        return []

    def routers(self) -> list[APIRouter]:
        """Routes the kind adds to the app (a face of its own: API paths, console pages);
        mounted before the console's, so a console page of its own wins over
        ``/admin/tasks/{id}``."""
        return []

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
