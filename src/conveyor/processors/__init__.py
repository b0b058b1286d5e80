"""Processor registry: kinds come from the ``conveyor.processors`` entry points.

A user adds a kind by installing a package that declares an entry point in
that group; nothing in the core needs to change.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from typing import Any

from conveyor.errors import UnknownKind
from conveyor.processors.base import Processor, ProcessorContext

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "conveyor.processors"


class ProcessorRegistry:
    def __init__(self, processors: dict[str, Processor]) -> None:
        self._processors = processors

    @classmethod
    def load(cls, settings: Any = None) -> ProcessorRegistry:
        found: dict[str, Processor] = {}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                proc_cls = ep.load()
                found[ep.name] = proc_cls(settings)
            except Exception:  # a broken plug-in must not take the service down
                log.exception("could not load processor %r", ep.name)
        if "transcode" not in found:  # running from a source tree without metadata
            from conveyor.processors.transcode import TranscodeProcessor

            found["transcode"] = TranscodeProcessor(settings)
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


__all__ = ["Processor", "ProcessorContext", "ProcessorRegistry"]
