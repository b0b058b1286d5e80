"""The remote worker protocol over HTTP: idle wake latency, round trips, file transfer.

    python bench/remote_worker.py [--idle-tasks 30] [--drain-tasks 300] [--file-mb 64]

Starts ``conveyor serve`` (SQLite + a local bucket folder in a temp dir) on
127.0.0.1 and talks to it as a remote worker does, through the ``http://``
backend and storage engines:

* idle wake: the worker loops ``claim()`` then ``wait_for_work(1.0)`` (the
  worker loop's own sequence); a producer submits one task at a time
  through ``POST /api/queue/add`` after a random pause of up to a second;
  latency = just before the submit request to the moment ``claim()``
  returned the task.  Three ways: the claim itself waits on the API
  (``claim_wait_s``, what ``conveyor worker`` does), an immediate claim
  then a ``/wait`` long-poll, and sleeping the poll interval.
* round trips: ``heartbeat`` with 8 leases, ``progress``; drain rate of
  ``claim(capacity=8)`` + ``complete()`` over HTTP.
* files: ``put_file`` and ``get_file`` of ``--file-mb`` MB streamed through the API.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from conveyor.models import ClaimedTask, Progress, WorkerInfo
from conveyor.remote.connection import ApiConnection
from conveyor.remote.queue import RemoteQueue
from conveyor.remote.storage import RemoteBlobStore

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.conftest import free_port


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))]


def start_api(data: Path) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    env = {**os.environ, "CONVEYOR_DATA_DIR": str(data), "CONVEYOR_CONFIG": str(data / "none")}
    env["CONVEYOR_LOG_LEVEL"] = "WARNING"
    args = ["serve", "--port", str(port), "--data-dir", str(data), "--no-trigger"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/api/health", timeout=1).status_code == 200:
                return url, proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("conveyor serve did not start")


def submit(api: httpx.Client) -> None:
    r = api.post(
        "/api/queue/add",
        json={"input_bucket": "input", "input_key": "bench.mp4", "transcode_types": ["thumbnail"]},
    )
    r.raise_for_status()


def idle_wake(url: str, api: httpx.Client, n: int, mode: str) -> list[float]:
    backend = RemoteQueue(ApiConnection(url), claim_wait_s=1.0 if mode == "claim" else 0.0)
    got: list[tuple[float, ClaimedTask]] = []
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            claimed = backend.claim("bench", ["transcode"], 1, 300)
            for c in claimed:
                got.append((time.monotonic(), c))
                backend.complete(c.lease, [])
            if not claimed:
                if mode == "sleep":
                    time.sleep(1.0)
                else:
                    backend.wait_for_work(1.0)

    t = threading.Thread(target=worker, daemon=True)
    t.start()
    time.sleep(0.5)
    latencies = []
    for _ in range(n):
        time.sleep(random.uniform(0.2, 1.0))
        before = len(got)
        sent = time.monotonic()
        submit(api)
        while len(got) == before:
            time.sleep(0.001)
        latencies.append(got[-1][0] - sent)
    stop.set()
    t.join(5)
    backend.close()
    return latencies


def round_trips(url: str, api: httpx.Client, n: int) -> None:
    backend = RemoteQueue(ApiConnection(url))
    for _ in range(8):
        submit(api)
    held = backend.claim("bench-rt", ["transcode"], 8, 300)
    info = WorkerInfo(id="bench-rt", kinds=["transcode"], concurrency=8)
    leases = [c.lease for c in held]
    hb, pr = [], []
    for _ in range(50):
        t0 = time.perf_counter()
        backend.heartbeat(info, leases, 300)
        hb.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        backend.progress(leases[0], Progress(percent=50, phase="encode"))
        pr.append(time.perf_counter() - t0)
    for c in held:
        backend.complete(c.lease, [])
    print(
        f"heartbeat (8 leases): median {statistics.median(hb) * 1000:.1f} ms; "
        f"progress: median {statistics.median(pr) * 1000:.1f} ms"
    )
    for _ in range(n):
        submit(api)
    t0 = time.perf_counter()
    done = 0
    while done < n:
        claimed = backend.claim("bench-rt", ["transcode"], 8, 300)
        for c in claimed:
            backend.complete(c.lease, [])
        done += len(claimed)
    took = time.perf_counter() - t0
    print(f"drain over HTTP (claim x8 + complete, 1 worker): {n / took:.0f} tasks/s")
    backend.close()


def files(url: str, tmp: Path, mb: int) -> None:
    store = RemoteBlobStore(ApiConnection(url))
    src = tmp / "big.bin"
    with open(src, "wb") as fh:
        for _ in range(mb):
            fh.write(os.urandom(1 << 20))
    t0 = time.perf_counter()
    store.put_file("output", "bench/big.bin", src)
    put_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    store.get_file("output", "bench/big.bin", tmp / "back.bin")
    get_s = time.perf_counter() - t0
    print(f"files through the API ({mb} MB): put {mb / put_s:.0f} MB/s, get {mb / get_s:.0f} MB/s")
    store.conn.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--idle-tasks", type=int, default=30)
    ap.add_argument("--drain-tasks", type=int, default=300)
    ap.add_argument("--file-mb", type=int, default=64)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        url, proc = start_api(tmp / "api")
        try:
            api = httpx.Client(base_url=url, timeout=30)
            api.put("/api/files/input/bench.mp4", content=b"\x00" * 1024).raise_for_status()
            for mode, how in (
                ("claim", "claim waits on the API, as conveyor worker does"),
                ("wait", "empty claim, then long-poll /wait"),
                ("sleep", "sleep 1 s poll"),
            ):
                lat = idle_wake(url, api, args.idle_tasks, mode)
                print(
                    f"idle wake over HTTP ({how}, {len(lat)} tasks): "
                    f"median {statistics.median(lat) * 1000:.1f} ms, "
                    f"p95 {pct(lat, 0.95) * 1000:.1f} ms, max {max(lat) * 1000:.1f} ms"
                )
            round_trips(url, api, args.drain_tasks)
            files(url, tmp, args.file_mb)
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
