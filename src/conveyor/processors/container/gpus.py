"""GPU inventory and allocation: each running task gets its own devices.

The inventory comes from ``nvidia-smi`` (no NVML binding to install), or is
declared (``CONVEYOR_GPUS=0,1,2,3``) where the worker cannot see the driver,
e.g. inside its own container. The allocator is per worker process: it never
hands one device to two tasks, and a task that must wait says why.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Callable

from conveyor.errors import ProcessorError, TaskCancelled


def inventory(spec: str = "auto") -> list[str]:
    """Device ids this worker may hand out: ``auto`` asks nvidia-smi, ``none`` is none."""
    spec = (spec or "auto").strip()
    if spec.lower() == "none":
        return []
    if spec.lower() != "auto":
        ids = [s.strip() for s in spec.split(",") if s.strip()]
        if len(set(ids)) != len(ids):
            raise ValueError(f"CONVEYOR_GPUS lists a device twice: {spec!r}")
        return ids
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


class GpuAllocator:
    def __init__(self, devices: list[str]) -> None:
        self.devices = list(devices)
        self._free = list(devices)
        self._cond = threading.Condition()

    @property
    def free(self) -> list[str]:
        with self._cond:
            return list(self._free)

    def _pick(self, want: int | list[str]) -> list[str] | None:
        if isinstance(want, list):
            return list(want) if all(d in self._free for d in want) else None
        return self._free[:want] if len(self._free) >= want else None

    def acquire(
        self,
        want: int | list[str],
        cancel: threading.Event,
        on_wait: Callable[[str], None] | None = None,
        poll_s: float = 0.2,
    ) -> list[str]:
        """Block until the request can be met, then hold the devices; [] for none."""
        if want == 0 or want == []:
            return []
        total = len(self.devices)
        if isinstance(want, list):
            unknown = [d for d in want if d not in self.devices]
            if unknown:
                raise ProcessorError(
                    f"needs GPU(s) {', '.join(unknown)}; this worker has "
                    f"{', '.join(self.devices) or 'none'}",
                    code="gpus_unavailable",
                )
        elif want > total:
            raise ProcessorError(
                f"needs {want} GPU(s); this worker has {total}", code="gpus_unavailable"
            )
        told = False
        with self._cond:
            while True:
                got = self._pick(want)
                if got is not None:
                    for d in got:
                        self._free.remove(d)
                    return got
                if cancel.is_set():
                    raise TaskCancelled("cancelled while waiting for GPUs")
                if not told and on_wait is not None:
                    n = want if isinstance(want, int) else len(want)
                    on_wait(f"needs {n} GPU(s); {len(self._free)} of {total} free on this worker")
                    told = True
                self._cond.wait(poll_s)

    def release(self, devices: list[str]) -> None:
        with self._cond:
            for d in devices:
                if d in self.devices and d not in self._free:
                    self._free.append(d)
            self._free.sort(key=self.devices.index)
            self._cond.notify_all()
