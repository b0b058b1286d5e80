"""The GPU allocator on its own: threads racing for a declared inventory of 4."""

from __future__ import annotations

import random
import threading
import time

import pytest

from conveyor.errors import ProcessorError, TaskCancelled
from conveyor.processors.container.gpus import GpuAllocator, inventory


def test_inventory_spec() -> None:
    assert inventory("none") == []
    assert inventory("0,1, 2,3") == ["0", "1", "2", "3"]
    with pytest.raises(ValueError):
        inventory("0,0")


def test_requests_of_1_2_and_4_never_share_a_device() -> None:
    alloc = GpuAllocator(["0", "1", "2", "3"])
    held: set[str] = set()
    lock = threading.Lock()
    errors: list[str] = []
    rng = random.Random(7)

    def job(n: int) -> None:
        got = alloc.acquire(n, threading.Event())
        with lock:
            if held & set(got) or len(got) != n:
                errors.append(f"{got} overlaps {held}")
            held.update(got)
        time.sleep(rng.uniform(0.001, 0.01))
        with lock:
            held.difference_update(got)
        alloc.release(got)

    threads = [threading.Thread(target=job, args=(n,)) for n in [1, 2, 4] * 15]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors
    assert all(not t.is_alive() for t in threads)
    assert alloc.free == ["0", "1", "2", "3"]


def test_explicit_ids_and_impossible_requests() -> None:
    alloc = GpuAllocator(["0", "1"])
    assert alloc.acquire(["1"], threading.Event()) == ["1"]
    with pytest.raises(ProcessorError, match="needs 3 GPU"):
        alloc.acquire(3, threading.Event())
    with pytest.raises(ProcessorError, match="needs GPU"):
        alloc.acquire(["7"], threading.Event())
    cancel = threading.Event()
    reasons: list[str] = []
    threading.Timer(0.3, cancel.set).start()
    with pytest.raises(TaskCancelled):
        alloc.acquire(2, cancel, on_wait=reasons.append)
    assert reasons == ["needs 2 GPU(s); 1 of 2 free on this worker"]
