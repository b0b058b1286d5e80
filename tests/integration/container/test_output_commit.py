"""Issue 14's container findings: a container task's outputs are committed, not just written.

Real faults, no mocks: a SeaweedFS server stopped while the job runs (finding 3),
and a worker process frozen with SIGSTOP past its lease while its Docker job
finishes, then thawed after another attempt completed the task (finding 1).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conveyor import outputs
from conveyor.backends.sqlite import SQLiteBackend
from conveyor.models import TaskStatus
from conveyor.processors import ProcessorRegistry
from conveyor.processors.container import ContainerProcessor
from conveyor.service import ConveyorService
from conveyor.worker import loop as worker_loop
from tests import dockerd, s3server
from tests.conftest import FAST_ENV, stop_outside_writes

from .conftest import Harness, make_settings
from .test_docker_lifecycle import containers_of

WRITE_THREE = (
    'for f in a b c; do echo "$f $CONVEYOR_ATTEMPT" > "$CONVEYOR_OUTPUT_DIR/$f.txt"; done; '
    'echo "written $CONVEYOR_ATTEMPT"; [ "$CONVEYOR_ATTEMPT" -gt 1 ] || sleep 2'
)


def test_storage_down_at_the_final_save_fails_the_attempt_instead_of_completing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, docker_engine: dockerd.DockerEngine
) -> None:
    """S3 stops while the job runs: the job exits 0 but its outputs cannot be saved, so
    the attempt fails (retryably); once S3 is back the task completes with all three."""
    try:
        weed = s3server.start_weed(tmp_path / "weed")
    except (FileNotFoundError, RuntimeError) as exc:
        if s3server.IN_CI:
            pytest.fail(f"SeaweedFS unavailable: {exc}")
        pytest.skip(f"SeaweedFS unavailable: {exc}")
    weed.export_credentials()
    # storage calls are retried in place for 30 s before the attempt gives up; what is
    # under test is what happens when they do give up, so give up after 4 s (in-process)
    monkeypatch.setattr(outputs, "STORAGE_RETRY_S", 4.0)
    # and the task handed back for the outage is claimed again after 1 s, not 10 s
    monkeypatch.setattr(worker_loop, "INFRA_RELEASE_DELAY_S", 1.0)
    try:
        settings = make_settings(
            tmp_path,
            monkeypatch,
            container_runner="docker",
            docker_host=docker_engine.host,
            container_sync_interval=0,  # the final save only: that is the one under test
        )
        backend = SQLiteBackend(settings.data_dir / "c.db", backoff_base=0.05)
        store = weed.store()
        registry = ProcessorRegistry({"container": ContainerProcessor(settings)})
        h = Harness(settings, ConveyorService(settings, backend, store, registry))
        try:
            h.worker()
            t = h.submit(image=docker_engine.image, command=["sh", "-c", WRITE_THREE])
            h.wait_log(t.id, "written 1", timeout=60)
            weed.halt()  # S3 is down before the job ends
            deadline = time.monotonic() + 120
            while True:
                cur = h.service.get(t.id)
                first = cur.history[0] if cur.history else None
                if first is not None and first.finished_at is not None:
                    break
                assert cur.status != TaskStatus.COMPLETED, (
                    f"completed with {len(cur.outputs)} of 3 outputs while S3 was down"
                )
                assert time.monotonic() < deadline, f"attempt 1 never ended: {cur}"
                time.sleep(0.1)
            print(f"\nFIGURE s3 down: attempt 1 ended {first.outcome}: {first.error}")
            assert cur.status != TaskStatus.COMPLETED, cur.outputs
            assert first.outcome in ("retry", "released"), first
            assert "could not be saved" in (first.error or ""), first
            weed.resume()
            done = h.wait(t.id, timeout=120)
            assert done.status == TaskStatus.COMPLETED, done.error
            assert sorted(o.name for o in done.outputs) == ["a.txt", "b.txt", "c.txt"]
            for o in done.outputs:
                with store.open(o.bucket, o.key) as fh:
                    assert fh.read().decode().startswith(o.name[0] + " ")
        finally:
            for w in h.workers:
                w.stop(grace=0.5)
            backend.close()
    finally:
        weed.stop()


def _objects(h: Harness, prefix: str) -> dict[str, tuple[int, bytes]]:
    found = {}
    for info in h.service.storage.list("output", prefix):
        with h.service.storage.open("output", info.key) as fh:
            found[info.key] = (info.size, fh.read())
    return found


def test_a_frozen_workers_stale_attempt_cannot_touch_a_completed_tasks_outputs(
    docker_harness: Harness,
    docker_engine: dockerd.DockerEngine,
    harness_factory: Callable[..., Harness],
    tmp_path: Path,
) -> None:
    """A worker is SIGSTOPped while its Docker job runs; the lease expires, another worker
    completes attempt 2; the first job ends; the frozen worker thaws and learns its lease
    is gone: no final output changes, none is added, and it stages nothing."""
    h = docker_harness
    script = (
        'echo "attempt=$CONVEYOR_ATTEMPT" > "$CONVEYOR_OUTPUT_DIR/result.txt"; '
        'echo "started $CONVEYOR_ATTEMPT"; '
        'if [ "$CONVEYOR_ATTEMPT" = 1 ]; then sleep 6; '
        'echo "attempt=1 late" > "$CONVEYOR_OUTPUT_DIR/result.txt"; '
        'echo stale > "$CONVEYOR_OUTPUT_DIR/extra.txt"; fi'
    )
    t = h.submit(image=docker_engine.image, command=["sh", "-c", script])
    env = {
        **os.environ,
        **FAST_ENV,
        "CONVEYOR_DATA_DIR": str(h.settings.data_dir),
        "CONVEYOR_CONFIG": str(tmp_path / "none.yaml"),
        "CONVEYOR_BACKEND_URL": f"sqlite:///{h.settings.data_dir / 'c.db'}",
        "CONVEYOR_STORAGE_URL": f"file://{h.settings.data_dir / 'buckets'}",
        "CONVEYOR_CONTAINER_RUNNER": "docker",
        "CONVEYOR_CONTAINER_NETWORK": "none",
        "CONVEYOR_CONTAINER_SYNC_INTERVAL": "0",
        "DOCKER_HOST": docker_engine.host,
        "CONVEYOR_LEASE_SECONDS": "3",
    }
    log_path = tmp_path / "frozen.log"
    log = open(log_path, "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "worker", "--worker-id", "frozen"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        h.wait_log(t.id, "started 1", timeout=60)
        stop_outside_writes(proc.pid, h.settings.data_dir / "c.db")
        frozen_at = time.monotonic()
        h.worker(worker_id="successor")  # reaps the expired lease, runs attempt 2
        done = h.wait(t.id, timeout=60)
        assert done.status == TaskStatus.COMPLETED and done.attempts == 2, done
        final = _objects(h, f"{t.id}/")
        assert final == {f"{t.id}/result.txt": (10, b"attempt=2\n")}, final
        # the frozen worker's job ends (its container exits) while the worker sleeps
        time.sleep(max(0.0, frozen_at + 7.0 - time.monotonic()))
        proc.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 30
        while containers_of(docker_engine, t.id) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert containers_of(docker_engine, t.id) == []
        time.sleep(2.0)  # whatever it would still do after removing its container
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
    after = _objects(h, f"{t.id}/")
    assert after == final, f"the stale attempt changed the outputs: {after}"
    assert h.service.get(t.id).status == TaskStatus.COMPLETED
    staged = [
        info.key
        for info in h.service.storage.list("output", f".conveyor-staging/{t.id}/")
        if info.key.split("/")[2].endswith("-1")
    ]
    assert staged == [], f"the stale attempt staged {staged}"
    print("\nFIGURE stale attempt: outputs unchanged; lease loss seen by the thawed worker")
