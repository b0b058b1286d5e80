"""The preamble of every route that reads or acts on tasks, written once.

Such a route needs the service, the caller's principal (admitted by ``require``) and
whose tasks it may see: a submitter only its own (``owner_filter``), everyone else all.
``caller(permission)`` is that one dependency; the tasks and events routes take it
instead of repeating the three lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Depends

from conveyor.service import ConveyorService
from conveyor.web.deps import get_service
from conveyor.web.security import Permission, Principal, owner_filter, require


@dataclass(frozen=True)
class Caller:
    service: ConveyorService
    principal: Principal
    owner: str | None  # the submitter whose tasks alone the caller sees; None: all


def caller(permission: Permission) -> Any:
    """A dependency: the service, the principal admitted for ``permission``, its owner
    filter.  ``route_permission`` still finds ``permission`` (it walks nested deps)."""

    async def dependency(
        service: ConveyorService = Depends(get_service),
        principal: Principal = require(permission),
    ) -> Caller:
        return Caller(service, principal, owner_filter(principal))

    dependency.__name__ = f"caller_{permission.name.lower()}"
    return Depends(dependency)
