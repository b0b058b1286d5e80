"""Processor registry: kinds come from the ``conveyor.processors`` entry points.

A user adds a kind by installing a package that declares an entry point in
that group; nothing in the core needs to change: the service, the faces and
the upload triggers ask the registry (and through it the kind's processor,
``conveyor.processors.base``) whatever they need to know about a kind.

Adding a kind (``tests/integration/test_toy_kind.py`` does all of it):

1. A ``Processor`` subclass with ``kind``, ``params_model`` (pydantic; refuse
   unknown fields) and ``run(ctx)``, staging its outputs through ``ctx.outputs``.
2. What it takes: ``suffixes`` / ``content_types`` (``upload_suffixes`` if the
   upload trigger should queue fewer of them).
3. Its settings, if any: a ``conveyor.config.KindSettings`` subclass with
   ``env_prefix="CONVEYOR_<KIND>_"`` as ``settings_model``; read ``self.config``.
4. Its console words and form: ``labels`` (``kind.<kind>`` and the form's keys,
   in ``en`` and ``zh-CN``), ``form()`` (``FormField``s); ``describe``,
   ``gauges``, ``routers`` and ``with_defaults`` as it needs them.
5. Register it: ``[project.entry-points."conveyor.processors"] <kind> =
   "package.module:Processor"`` (and ``conveyor.cli`` for commands of its own).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from functools import cache
from typing import Any

from conveyor.errors import InvalidRequest, UnknownKind
from conveyor.processors.base import ChildrenSpawned, Processor, ProcessorContext

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "conveyor.processors"
# a process that runs one kind only loads that kind (a Slurm job: its task's kind, set by
# the executor), so it does not import every kind's libraries at start; ``kind=module:Class``
# also says where its processor is, so it does not read every package's entry points either
LOAD_KINDS_ENV = "CONVEYOR_LOAD_KINDS"


@cache
def installed() -> dict[str, type[Processor]]:
    """The processor classes the installed packages declare, by kind (only those named
    in ``CONVEYOR_LOAD_KINDS``, comma-separated ``kind`` or ``kind=module:Class``, when
    it is set)."""
    only: dict[str, str] = {}
    for item in os.environ.get(LOAD_KINDS_ENV, "").split(","):
        name, _, path = item.strip().partition("=")
        if name:
            only[name] = path
    found: dict[str, type[Processor]] = {}
    for name, path in only.items():
        if path:
            module, _, attrs = path.partition(":")
            with contextlib.suppress(ImportError, AttributeError, ValueError):
                obj: Any = importlib.import_module(module)
                for attr in filter(None, attrs.split(".")):
                    obj = getattr(obj, attr)
                found[name] = obj
    if only and set(only) <= set(found):
        return found
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if (only and ep.name not in only) or ep.name in found:
            continue
        try:
            found[ep.name] = ep.load()
        except Exception:  # a broken plug-in must not take the service down
            log.exception("could not load processor %r", ep.name)
    if "transcode" not in found and (not only or "transcode" in only):  # no metadata
        from conveyor.processors.transcode import TranscodeProcessor

        found["transcode"] = TranscodeProcessor
    return found


def default_kind() -> str:
    """The kind a task gets when none is named, among the installed ones."""
    return _default_of({k: cls.submit_default for k, cls in installed().items()})


def _default_of(flags: dict[str, bool]) -> str:
    chosen = sorted(k for k, is_default in flags.items() if is_default)
    if chosen:
        return chosen[0]
    if len(flags) == 1:
        return next(iter(flags))
    known = ", ".join(sorted(flags)) or "none"
    raise InvalidRequest(f"kind is missing: name the kind of task ({known})")


class ProcessorRegistry:
    def __init__(self, processors: dict[str, Processor]) -> None:
        self._processors = processors

    @classmethod
    def load(cls, settings: Any = None) -> ProcessorRegistry:
        found: dict[str, Processor] = {}
        for kind, proc_cls in installed().items():
            try:
                found[kind] = proc_cls(settings)
            except Exception:  # a broken plug-in must not take the service down
                log.exception("could not load processor %r", kind)
        return cls(found)

    def get(self, kind: str) -> Processor:
        try:
            return self._processors[kind]
        except KeyError:
            known = ", ".join(sorted(self._processors)) or "none"
            raise UnknownKind(f"unknown task kind {kind!r}; known kinds: {known}") from None

    def kinds(self) -> list[str]:
        return sorted(self._processors)

    def items(self) -> list[tuple[str, Processor]]:
        return sorted(self._processors.items())

    def default_kind(self) -> str:
        """The kind a submit without one gets: the one whose processor says
        ``submit_default`` (the only one, if there is just one kind)."""
        return _default_of({k: p.submit_default for k, p in self._processors.items()})

    def kind_for(
        self, key: str, content_type: str | None = None, *, upload: bool = False
    ) -> str | None:
        """The kind an object called ``key`` is an input of (``upload``: one that arrived
        in the input bucket), or None when no kind takes it.  Where several do, the
        default kind wins, then the first by name."""
        able = [k for k, p in self.items() if p.accepts(key, content_type, upload=upload)]
        if not able:
            return None
        try:
            default = self.default_kind()
        except InvalidRequest:
            default = ""
        return default if default in able else able[0]

    def request_field_kinds(self, name: str) -> list[str]:
        """The kinds whose params include the submit request's top-level field ``name``."""
        return [k for k, p in self.items() if name in p.request_fields]


__all__ = [
    "ChildrenSpawned",
    "Processor",
    "ProcessorContext",
    "ProcessorRegistry",
    "default_kind",
    "installed",
]
