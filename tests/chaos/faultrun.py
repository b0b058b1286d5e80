"""A scripted fault run: PostgreSQL + SeaweedFS, one API and three workers, faults, then an audit.

Issue 14's show-points 2 and 3. Everything is real: a throwaway PostgreSQL
cluster (``tests/pgserver.py``), a SeaweedFS (``tests/s3server.py``) whose
output bucket is **versioned**, so every write and delete of an output is on
record, ``conveyor serve`` and three ``conveyor worker`` processes with a
short lease, transcodes of small ffmpeg clips (each task its own input, so
each task its own output keys) and container tasks on the local runner whose
command writes ``result.txt`` naming its attempt (``$CONVEYOR_ATTEMPT``).

While tasks are submitted (each with an idempotency key, resubmitted until
acknowledged) and a second client keeps listing and reading, a fault script
runs, per round:

* SIGKILL a busy worker (its process group), start a new one on its folder;
* SIGSTOP a worker running a container job until its lease is gone and
  another worker completed the task, then SIGCONT (the job, in a session of
  its own, finished meanwhile: the resumed attempt is a zombie);
* ``pg_ctl restart -m fast``;
* SIGKILL the API, start it again on the same port;
* stop SeaweedFS for ``s3_outage_s`` seconds, start it again on its data;
* with ``all_faults`` (the large run) also: SIGSTOP a worker whose transcode
  is verifying its outputs (so it is frozen around its upload), a second
  PostgreSQL restart and a second worker kill.

Then, once no task is pending or processing, the audit:

* lost = submissions without a task, duplicated = submissions with more than
  one task or tasks completed more than once, stuck = tasks still pending or
  processing, failed = tasks failed or cancelled: all must be 0;
* every completed task's outputs exist at their final keys (transcode:
  ``<input stem>/<type>.<ext>``, container: ``<task id>/result.txt``);
* no final key was written or deleted after completion: from the bucket's
  versions (ListObjectVersions), nothing new after the audit first saw the
  task completed with its outputs in place, and before that nothing after
  the task's ``finished_at`` but the committed content itself;
* a completed container task's ``result.txt`` names the attempt that
  completed it;
* every 5xx the clients saw is JSON with an error code, every 503 carries
  ``Retry-After``.

Run it alone (prints the summary; exit 1 when the audit fails)::

    .venv/bin/python -m tests.chaos.faultrun              # 30 tasks, one of each fault
    .venv/bin/python -m tests.chaos.faultrun --large      # 160 tasks, all faults, two rounds
    .venv/bin/python -m tests.chaos.faultrun --tasks 300 --rounds 2 --all-faults --keep
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import free_port, make_clip, start_process
from tests.pgserver import PgCluster, start_cluster
from tests.s3server import S3Server, start_weed

TRANSCODE_TYPES = ["mp4_smooth", "thumbnail"]
TYPE_FILES = {"mp4_smooth": "mp4_smooth.mp4", "thumbnail": "thumbnail.jpg"}
# the job: result.txt names its attempt, then a little work
CONTAINER_COMMAND = [
    "sh",
    "-c",
    'echo "attempt=$CONVEYOR_ATTEMPT" > "$CONVEYOR_OUTPUT_DIR/result.txt"; sleep 2',
]
TERMINAL = ("completed", "failed", "cancelled")
LOCAL_RUNNER_RISK = "i-understand-submitters-run-commands-on-this-host"  # conveyor.config's


@dataclass
class RunConfig:
    tasks: int = 40
    rounds: int = 1
    all_faults: bool = False
    workers: int = 3
    concurrency: int = 2
    lease_s: float = 6.0
    container_share: float = 0.3
    s3_outage_s: float = 10.0
    drain_timeout_s: float = 240.0
    seed: int = 14
    # the pauses between faults and the submission window, scaled (1: the large run's)
    pace: float = 1.0

    @classmethod
    def default(cls) -> RunConfig:
        """For ``make test``: 30 tasks over a window 0.7 times as long (the same rate of
        submissions while each fault happens), one of each fault, under a minute on two
        cores."""
        return cls(tasks=30, pace=0.7)

    @classmethod
    def large(cls) -> RunConfig:
        """``CONVEYOR_CHAOS_LARGE=1``: 160 tasks, every fault, two rounds."""
        return cls(tasks=160, rounds=2, all_faults=True, drain_timeout_s=600.0)


def _log(msg: str) -> None:
    print(f"[faultrun {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- the processes -------------------------------------------------------------------------
class Stack:
    """PostgreSQL, SeaweedFS, ``conveyor serve`` and the workers, and the faults done to them."""

    def __init__(self, workdir: Path, cfg: RunConfig) -> None:
        self.workdir = workdir
        self.cfg = cfg
        self.pg: PgCluster | None = None
        self.s3: S3Server | None = None
        self.env: dict[str, str] = {}
        self.api: subprocess.Popen[bytes] | None = None
        self.api_port = free_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.workers: dict[int, subprocess.Popen[bytes]] = {}
        self.worker_names: dict[int, str] = {}  # slot -> current worker id
        self.slot_of: dict[str, int] = {}  # every worker id ever used -> slot
        self.generation: Counter[int] = Counter()
        self.frozen: set[int] = set()
        self.lock = threading.Lock()

    # physical bucket names on the server
    @property
    def input_bucket(self) -> str:
        assert self.s3 is not None
        return f"{self.s3.bucket_prefix}input"

    @property
    def output_bucket(self) -> str:
        assert self.s3 is not None
        return f"{self.s3.bucket_prefix}output"

    def start(self) -> None:
        self.pg = start_cluster()
        self.s3 = start_weed(self.workdir / "weed")
        db = self.pg.create_database()
        client = self.s3.client()
        for bucket in (self.input_bucket, self.output_bucket):
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                client.create_bucket(Bucket=bucket)
        client.put_bucket_versioning(
            Bucket=self.output_bucket, VersioningConfiguration={"Status": "Enabled"}
        )
        status = client.get_bucket_versioning(Bucket=self.output_bucket).get("Status")
        if status != "Enabled":
            raise RuntimeError(f"the output bucket's versioning is {status!r}, not Enabled")
        self.env = {
            "CONVEYOR_BACKEND_URL": db,
            "CONVEYOR_STORAGE_URL": self.s3.storage_url(),
            "AWS_ACCESS_KEY_ID": self.s3.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.s3.secret_access_key,
            "CONVEYOR_LEASE_SECONDS": str(self.cfg.lease_s),
            "CONVEYOR_HEARTBEAT_INTERVAL": "1",
            "CONVEYOR_REAP_INTERVAL": "1",
            "CONVEYOR_RETRY_BACKOFF_BASE": "1",
            "CONVEYOR_POLL_INTERVAL": "0.5",
            "CONVEYOR_SHUTDOWN_GRACE": "5",
            "CONVEYOR_ENCODER": "cpu",
            # container tasks without an image run as local processes: the operator's opt-in
            # (the second flag is what config.LOCAL_RUNNER_RISK asks for when auth is on)
            "CONVEYOR_CONTAINER_RUNNER": "local",
            "CONVEYOR_CONTAINER_LOCAL_UNSANDBOXED": LOCAL_RUNNER_RISK,
            "CONVEYOR_CONTAINER_SYNC_INTERVAL": "1",  # the output folder is synced while it runs
            "CONVEYOR_GPUS": "none",
            "LOG_LEVEL": "INFO",
        }
        self.start_api()
        for slot in range(self.cfg.workers):
            self.start_worker(slot)

    # -- API ---------------------------------------------------------------------------
    def start_api(self, timeout: float = 90) -> None:
        data = self.workdir / "api"
        data.mkdir(exist_ok=True)
        args = ["serve", "--port", str(self.api_port), "--data-dir", str(data), "--no-trigger"]
        self.api = start_process(args, data, self.workdir / "api.log", self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.api.poll() is not None:
                raise RuntimeError(f"the API exited: see {self.workdir / 'api.log'}")
            try:
                httpx.get(f"{self.url}/api/queue/status", timeout=2)
                return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError(f"the API did not answer in {timeout}s")

    def kill_api(self) -> None:
        assert self.api is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.api.pid, signal.SIGKILL)
        self.api.wait(10)

    # -- workers ---------------------------------------------------------------------------
    def start_worker(self, slot: int) -> str:
        self.generation[slot] += 1
        name = f"w{slot}-{self.generation[slot]}"
        data = self.workdir / f"worker{slot}"  # the same folder after a restart: the same host
        data.mkdir(exist_ok=True)
        proc = start_process(
            [
                "worker",
                "--data-dir",
                str(data),
                "--concurrency",
                str(self.cfg.concurrency),
                "--worker-id",
                name,
            ],
            data,
            self.workdir / f"worker{slot}.log",
            {**self.env, "TEMP_DIR": str(data / "tmp")},
        )
        with self.lock:
            self.workers[slot] = proc
            self.worker_names[slot] = name
            self.slot_of[name] = slot
        return name

    def kill_worker(self, slot: int) -> None:
        proc = self.workers[slot]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def freeze(self, slot: int) -> None:
        with self.lock:
            self.frozen.add(slot)
        os.killpg(self.workers[slot].pid, signal.SIGSTOP)

    def thaw(self, slot: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.workers[slot].pid, signal.SIGCONT)
        with self.lock:
            self.frozen.discard(slot)

    def leftover_work_dirs(self) -> int:
        n = 0
        for slot in range(self.cfg.workers):
            work = self.workdir / f"worker{slot}" / "tmp" / "conveyor-work"
            if work.is_dir():
                n += sum(1 for _ in work.iterdir())
        return n

    def stop(self) -> None:
        for slot in list(self.frozen):
            self.thaw(slot)
        procs = [*self.workers.values(), *([self.api] if self.api is not None else [])]
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if self.s3 is not None:
            self.s3.stop()
        if self.pg is not None:
            self.pg.stop()


# -- the clients --------------------------------------------------------------------------
@dataclass
class Submission:
    key: str  # idempotency key
    body: dict[str, Any]
    kind: str
    task_id: str | None = None
    tries: int = 0


class Clients:
    """A submitter and a reader: every answer of 500 or more is checked and kept."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.lock = threading.Lock()
        self.calls = 0
        self.server_errors: Counter[str] = Counter()  # "503 unavailable" -> n
        self.bad_5xx: list[str] = []
        self.transport_errors: Counter[str] = Counter()
        self.acked: list[Submission] = []
        self.unacked: list[Submission] = []
        self.rejected: list[str] = []  # a submission refused with a 4xx: the harness is wrong
        self.stop = threading.Event()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=httpx.Timeout(60, connect=5))

    def call(
        self, client: httpx.Client, method: str, path: str, **kw: Any
    ) -> httpx.Response | None:
        try:
            r = client.request(method, path, **kw)
        except httpx.TransportError as exc:
            with self.lock:
                self.calls += 1
                self.transport_errors[type(exc).__name__] += 1
            return None
        with self.lock:
            self.calls += 1
            if r.status_code >= 500:
                self._check_5xx(f"{method} {path.split('?')[0]}", r)
        return r

    def _check_5xx(self, what: str, r: httpx.Response) -> None:
        try:
            error = r.json()["error"]
            code = error["code"]
            assert isinstance(code, str) and code
        except Exception:
            self.server_errors[f"{r.status_code} (not JSON)"] += 1
            self.bad_5xx.append(f"{what}: {r.status_code} {r.text[:80]!r}")
            return
        self.server_errors[f"{r.status_code} {code}"] += 1
        if r.status_code == 503 and not r.headers.get("retry-after", "").strip().isdigit():
            self.bad_5xx.append(f"{what}: 503 {code} without Retry-After")

    def submit_all(self, plan: list[Submission], window_s: float) -> None:
        """Submit ``plan`` evenly over ``window_s``, each until the API acknowledges it."""
        start = time.monotonic()
        gap = window_s / max(1, len(plan))
        with self.client() as client:
            for i, sub in enumerate(plan):
                if self.stop.is_set():
                    self.unacked.extend(plan[i:])
                    return
                wait = start + i * gap - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                deadline = time.monotonic() + 180
                while time.monotonic() < deadline and not self.stop.is_set():
                    sub.tries += 1
                    r = self.call(client, "POST", "/api/queue/add", json=sub.body)
                    if r is not None and r.status_code in (200, 201):
                        sub.task_id = r.json()["task_id"]
                        break
                    delay = 0.5
                    if r is not None and r.headers.get("retry-after", "").isdigit():
                        delay = min(3.0, float(r.headers["retry-after"]))
                    if r is not None and r.status_code < 500 and r.status_code != 429:
                        with self.lock:
                            self.rejected.append(f"{sub.key}: {r.status_code} {r.text[:120]}")
                        break
                    time.sleep(delay)
                with self.lock:
                    (self.acked if sub.task_id else self.unacked).append(sub)

    def read_loop(self) -> None:
        rng = random.Random(7)
        with self.client() as client:
            while not self.stop.is_set():
                self.call(client, "GET", "/api/tasks", params={"limit": 50})
                self.call(client, "GET", "/api/queue/status")
                with self.lock:
                    ids = [s.task_id for s in self.acked[-50:] if s.task_id]
                if ids:
                    self.call(client, "GET", f"/api/tasks/{rng.choice(ids)}")
                time.sleep(0.2)


# -- the bucket's record -----------------------------------------------------------------------
def version_time(v: dict[str, Any]) -> float:
    """When a version was written: SeaweedFS's version id holds it in ns (2**63-1 - unix ns);
    else LastModified (whole seconds, a lower bound)."""
    lm = float(v["LastModified"].timestamp())
    vid = str(v.get("VersionId") or "")
    with contextlib.suppress(ValueError):
        t = ((2**63 - 1) - int(vid[:16], 16)) / 1e9
        if lm - 1.0 <= t <= lm + 2.0:
            return t
    return lm


@dataclass
class KeyHistory:
    versions: list[dict[str, Any]]  # ListObjectVersions' Versions and DeleteMarkers for one key

    @property
    def ids(self) -> set[str]:
        return {str(v.get("VersionId")) for v in self.versions}

    @property
    def latest(self) -> dict[str, Any] | None:
        for v in self.versions:
            if v.get("IsLatest"):
                return v
        return None

    @property
    def present(self) -> bool:
        latest = self.latest
        return latest is not None and not latest.get("delete_marker")


class Bucket:
    def __init__(self, s3: S3Server, bucket: str) -> None:
        from botocore.config import Config

        from conveyor.storage.s3 import new_session

        self.bucket = bucket
        self.client = new_session(region=s3.region).client(
            "s3",
            endpoint_url=s3.endpoint_url,
            region_name=s3.region,
            aws_access_key_id=s3.access_key_id,
            aws_secret_access_key=s3.secret_access_key,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"mode": "standard", "max_attempts": 2},
                connect_timeout=2,
                read_timeout=10,
            ),
        )

    def history(self, key: str) -> KeyHistory:
        out: list[dict[str, Any]] = []
        for page in self.client.get_paginator("list_object_versions").paginate(
            Bucket=self.bucket, Prefix=key
        ):
            for v in page.get("Versions", []):
                if v["Key"] == key:
                    out.append(dict(v))
            for d in page.get("DeleteMarkers", []):
                if d["Key"] == key:
                    out.append({**d, "delete_marker": True})
        return KeyHistory(out)

    def read(self, key: str) -> bytes:
        body: bytes = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return body


# -- the audit ----------------------------------------------------------------------------------
@dataclass
class Snapshot:
    seen_at: float
    keys: dict[str, set[str]]  # final key -> version ids when first seen complete


@dataclass
class Report:
    cfg: RunConfig
    elapsed_s: float = 0.0
    submissions: int = 0
    tasks: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    missing_outputs: list[str] = field(default_factory=list)
    rewritten: list[str] = field(default_factory=list)
    wrong_result: list[str] = field(default_factory=list)
    retries: int = 0
    releases: int = 0
    faults: list[str] = field(default_factory=list)
    fault_counts: Counter[str] = field(default_factory=Counter)
    server_errors: Counter[str] = field(default_factory=Counter)
    bad_5xx: list[str] = field(default_factory=list)
    transport_errors: int = 0
    calls: int = 0
    unacked: int = 0
    leftover_work_dirs: int = 0
    log_errors: Counter[str] = field(default_factory=Counter)
    workdir: str = ""

    @staticmethod
    def tasks_in(items: list[str]) -> int:
        """How many tasks ``items`` speak of (each item starts with its task's id or key)."""
        return len({item.split(" ", 1)[0].rstrip(":") for item in items})

    def failures(self) -> list[str]:
        out = []
        for name, items in (
            ("lost", self.lost),
            ("duplicated", self.duplicated),
            ("stuck", self.stuck),
            ("failed", self.failed),
            ("submissions refused (4xx)", self.rejected),
            ("completed tasks with outputs missing at their final keys", self.missing_outputs),
            ("completed tasks with outputs written or deleted after completion", self.rewritten),
            ("container tasks whose result.txt is not the completing attempt's", self.wrong_result),
        ):
            if items:
                out.append(f"{name} = {self.tasks_in(items)}: " + "; ".join(items[:6]))
        if self.bad_5xx:
            out.append(
                f"5xx answers not JSON with a code, or 503 without Retry-After = "
                f"{len(self.bad_5xx)}: " + "; ".join(self.bad_5xx[:6])
            )
        return out

    def table(self) -> str:
        five = sum(self.server_errors.values())
        rows = [
            ("tasks", f"{self.tasks} ({', '.join(f'{k} {n}' for k, n in self.by_kind.items())})"),
            ("completed", str(self.by_status.get("completed", 0))),
            ("failed", str(len(self.failed))),
            (
                "lost / duplicated / stuck",
                f"{len(self.lost)} / {len(self.duplicated)} / {len(self.stuck)}",
            ),
            ("tasks with outputs missing", str(self.tasks_in(self.missing_outputs))),
            (
                "tasks with outputs rewritten/deleted after completion",
                str(self.tasks_in(self.rewritten)),
            ),
            ("container tasks with a wrong result.txt", str(self.tasks_in(self.wrong_result))),
            ("retries (attempts beyond the first)", str(self.retries)),
            ("releases (not counted)", str(self.releases)),
            ("faults injected", ", ".join(f"{k} x{n}" for k, n in self.fault_counts.items())),
            ("API calls / transport errors", f"{self.calls} / {self.transport_errors}"),
            ("5xx seen", f"{five} " + (f"({dict(self.server_errors)})" if five else "")),
            ("5xx not JSON / 503 without Retry-After", str(len(self.bad_5xx))),
            ("submissions never acknowledged", str(self.unacked)),
            ("work folders left after the workers stopped", str(self.leftover_work_dirs)),
            ("elapsed", f"{self.elapsed_s:.0f} s"),
        ]
        width = max(len(k) for k, _ in rows)
        lines = [
            f"Fault run: {self.cfg.tasks} tasks, {self.cfg.workers} workers x "
            f"{self.cfg.concurrency}, lease {self.cfg.lease_s:g} s, {self.cfg.rounds} round(s)"
            + (", all faults" if self.cfg.all_faults else ""),
            f"  {'-' * width}  {'-' * 12}",
        ]
        lines += [f"  {k.ljust(width)}  {v}" for k, v in rows]
        return "\n".join(lines)


# attempts a task may lose to worker faults: one less than its max_attempts (3), so that
# its last attempt may finish; a task whose every attempt is killed fails, as it should,
# and the run counts only failures the system caused (a large run once hit one task on
# each of its three attempts: SIGSTOP, SIGKILL, SIGSTOP)
MAY_LOSE = 2


class FaultRun:
    def __init__(self, cfg: RunConfig, workdir: Path) -> None:
        self.cfg = cfg
        self.workdir = workdir
        self.stack = Stack(workdir, cfg)
        self.report = Report(cfg=cfg, workdir=str(workdir))
        self.snapshots: dict[str, Snapshot] = {}
        self.tasks: dict[str, dict[str, Any]] = {}
        self.stop = threading.Event()
        self.t0 = time.monotonic()
        self.rng = random.Random(cfg.seed)
        self.clients: Clients | None = None
        self.bucket: Bucket | None = None
        self.fault_threads: list[threading.Thread] = []
        self.hits: Counter[str] = Counter()  # attempts each task lost to a worker fault

    # -- bookkeeping ----------------------------------------------------------------------
    def fault(self, kind: str, detail: str = "", *, count: bool = True) -> None:
        line = f"t+{time.monotonic() - self.t0:5.1f}s {kind}" + (f": {detail}" if detail else "")
        self.report.faults.append(line)
        if count:
            self.report.fault_counts[kind] += 1
        _log(line)

    def api_tasks(self, client: httpx.Client, **params: Any) -> list[dict[str, Any]] | None:
        out: list[dict[str, Any]] = []
        cursor = None
        while True:
            q: dict[str, Any] = {"limit": 1000, **params}
            if cursor:
                q["cursor"] = cursor
            try:
                r = client.get("/api/tasks", params=q)
            except httpx.HTTPError:
                return None
            if r.status_code != 200:
                return None
            body = r.json()
            out += body["tasks"]
            cursor = body.get("next_cursor")
            if not cursor:
                return out

    # -- the plan --------------------------------------------------------------------------
    def plan(self) -> list[Submission]:
        assert self.stack.s3 is not None
        n_container = round(self.cfg.tasks * self.cfg.container_share)
        kinds = ["container"] * n_container + ["transcode"] * (self.cfg.tasks - n_container)
        self.rng.shuffle(kinds)
        clip = make_clip(self.workdir / "clip.mp4", width=160, height=120, seconds=1.0)
        inputs = Bucket(self.stack.s3, self.stack.input_bucket)
        run = uuid.uuid4().hex[:8]
        plan = []
        for i, kind in enumerate(kinds):
            key = f"chaos-{run}-{i:04d}"
            if kind == "transcode":
                input_key = f"chaos/{run}/in-{i:04d}.mp4"
                inputs.client.upload_file(str(clip), inputs.bucket, input_key)
                body: dict[str, Any] = {
                    "input_key": input_key,
                    "transcode_types": TRANSCODE_TYPES,
                    "idempotency_key": key,
                }
            else:
                body = {
                    "kind": "container",
                    "params": {"command": CONTAINER_COMMAND, "runner": "local"},
                    "idempotency_key": key,
                }
            plan.append(Submission(key=key, body=body, kind=kind))
        return plan

    # -- the monitor: the first sight of each completed task's outputs ----------------------------
    def expected_keys(self, task: dict[str, Any]) -> list[str]:
        if task["kind"] == "transcode":
            stem = task["input"]["key"].rsplit(".", 1)[0]
            return [f"{stem}/{TYPE_FILES[t]}" for t in TRANSCODE_TYPES]
        return [f"{task['id']}/result.txt"]

    def snapshot(self, task: dict[str, Any]) -> bool:
        assert self.bucket is not None
        seen_at = time.time()
        keys: dict[str, set[str]] = {}
        try:
            for key in self.expected_keys(task):
                h = self.bucket.history(key)
                if not h.present:
                    return False  # not (yet) visible: committed later, or missing
                keys[key] = h.ids
        except Exception:
            return False  # S3 down: later
        self.snapshots[task["id"]] = Snapshot(seen_at=seen_at, keys=keys)
        return True

    def monitor(self) -> None:
        assert self.clients is not None
        with self.clients.client() as client:
            while not self.stop.is_set():
                tasks = self.api_tasks(client)
                if tasks is not None:
                    for t in tasks:
                        self.tasks[t["id"]] = t
                        if t["status"] == "completed" and t["id"] not in self.snapshots:
                            self.snapshot(t)
                self.stop.wait(1.0)

    # -- faults -------------------------------------------------------------------------------
    def processing(self) -> list[dict[str, Any]]:
        assert self.clients is not None
        with self.clients.client() as client:
            tasks = self.api_tasks(client, status="processing")
        return tasks or []

    def busy_slot(
        self, want: Callable[[dict[str, Any]], bool] | None = None, wait_s: float = 20
    ) -> tuple[int, dict[str, Any]] | None:
        """A live, unfrozen worker running a task ``want`` accepts (any task after ``wait_s``/2),
        none of whose tasks has already lost ``MAY_LOSE`` attempts to faults; every task it
        runs is counted as hit (a kill or a freeze costs each of them its attempt)."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and not self.stop.is_set():
            relaxed = time.monotonic() > deadline - wait_s / 2
            running = self.processing()
            on_slot: dict[int, list[str]] = {}
            for t in running:
                slot = self.stack.slot_of.get(t.get("worker_id") or "")
                if slot is not None:
                    on_slot.setdefault(slot, []).append(t["id"])
            for t in running:
                slot = self.stack.slot_of.get(t.get("worker_id") or "")
                if slot is None or slot in self.stack.frozen:
                    continue
                if self.stack.worker_names.get(slot) != t.get("worker_id"):
                    continue  # a dead generation's lease
                if any(self.hits[i] >= MAY_LOSE for i in on_slot[slot]):
                    continue  # one more would fail a task for the faults alone
                if want is None or want(t) or relaxed:
                    self.hits.update(on_slot[slot])
                    return slot, t
            time.sleep(0.1)
        return None

    def kill_worker(self) -> None:
        found = self.busy_slot()
        if found is None:
            return
        slot, t = found
        old = self.stack.worker_names[slot]
        self.stack.kill_worker(slot)
        time.sleep(1.0)
        new = self.stack.start_worker(slot)
        self.fault("worker SIGKILL", f"{old} running {t['kind']} {t['id']}; restarted as {new}")

    def freeze_worker(self, want: Callable[[dict[str, Any]], bool], why: str) -> None:
        found = self.busy_slot(want)
        if found is None:
            return
        slot, t = found
        name = self.stack.worker_names[slot]
        self.stack.freeze(slot)
        phase = f"{t['progress'].get('phase')} {t['progress'].get('percent')}%"
        self.fault(
            "worker SIGSTOP past lease", f"{name} ({why}) with {t['kind']} {t['id']} at {phase}"
        )

        def thaw() -> None:
            frozen_at = time.monotonic()
            done = ""
            assert self.clients is not None
            with self.clients.client() as client:
                while time.monotonic() - frozen_at < 45:
                    if time.monotonic() - frozen_at > self.cfg.lease_s + 2:
                        try:
                            cur = client.get(f"/api/tasks/{t['id']}").json()
                        except Exception:
                            cur = {}
                        if cur.get("status") in TERMINAL:
                            done = f"{cur['status']} by {cur.get('worker_id')} meanwhile"
                            break
                    time.sleep(0.5)
            self.stack.thaw(slot)
            held = time.monotonic() - frozen_at
            self.fault(
                "worker SIGCONT",
                f"{name} after {held:.0f} s; task {done or 'not finished'}",
                count=False,
            )

        th = threading.Thread(target=thaw, name=f"thaw-{name}", daemon=True)
        th.start()
        self.fault_threads.append(th)

    def pg_restart(self) -> None:
        assert self.stack.pg is not None
        t = time.monotonic()
        self.stack.pg.restart("fast")
        self.fault("PostgreSQL restart -m fast", f"{time.monotonic() - t:.1f} s")

    def api_kill(self) -> None:
        self.stack.kill_api()
        t = time.monotonic()
        self.stack.start_api()
        self.fault(
            "API SIGKILL", f"back on port {self.stack.api_port} in {time.monotonic() - t:.1f} s"
        )

    def s3_outage(self) -> None:
        assert self.stack.s3 is not None
        self.stack.s3.halt()
        self.fault("S3 stopped", count=False)
        time.sleep(self.cfg.s3_outage_s)
        t = time.monotonic()
        self.stack.s3.resume()
        down = self.cfg.s3_outage_s + time.monotonic() - t
        self.fault("S3 outage", f"back after {down:.0f} s")

    def round(self, n: int) -> None:
        def container_running(t: dict[str, Any]) -> bool:
            return bool(t["kind"] == "container" and t["progress"].get("phase") == "running")

        def transcode_verifying(t: dict[str, Any]) -> bool:
            return bool(
                t["kind"] == "transcode" and (t["progress"].get("phase") in ("verify", "upload"))
            )

        steps: list[tuple[float, Callable[[], None]]] = [
            (3, self.kill_worker),
            (4, lambda: self.freeze_worker(container_running, "a container job running")),
            (4, self.pg_restart),
            (6, self.api_kill),
            (6, self.s3_outage),
        ]
        if self.cfg.all_faults:
            steps += [
                (
                    3,
                    lambda: self.freeze_worker(
                        transcode_verifying, "a transcode verifying/uploading"
                    ),
                ),
                (5, self.pg_restart),
                (4, self.kill_worker),
            ]
        _log(f"round {n}: {len(steps)} faults")
        for pause, step in steps:
            if self.stop.wait(pause * self.cfg.pace):
                return
            try:
                step()
            except Exception as exc:  # the run goes on; the report says what failed
                self.fault("fault step failed", f"{getattr(step, '__name__', step)}: {exc}")

    def fault_window_s(self) -> float:
        per_round = 36.0 + (25.0 if self.cfg.all_faults else 0.0)
        return per_round * self.cfg.rounds * self.cfg.pace

    # -- the run ---------------------------------------------------------------------------------
    def run(self) -> Report:
        try:
            _log(f"starting PostgreSQL, SeaweedFS, the API and {self.cfg.workers} workers")
            self.stack.start()
            assert self.stack.s3 is not None
            self.bucket = Bucket(self.stack.s3, self.stack.output_bucket)
            plan = self.plan()
            self.clients = Clients(self.stack.url)
            self.t0 = time.monotonic()
            threads = [
                threading.Thread(
                    target=self.clients.submit_all,
                    args=(plan, self.fault_window_s()),
                    name="submitter",
                ),
                threading.Thread(target=self.clients.read_loop, name="reader", daemon=True),
                threading.Thread(target=self.monitor, name="monitor", daemon=True),
            ]
            for th in threads:
                th.start()
            for n in range(1, self.cfg.rounds + 1):
                self.round(n)
            for th in self.fault_threads:
                th.join(60)
            threads[0].join(300)
            self.drain()
            self.audit(plan)
        finally:
            self.stop.set()
            if self.clients is not None:
                self.clients.stop.set()
            self.stack.stop()
            self.report.leftover_work_dirs = self.stack.leftover_work_dirs()
            self.report.log_errors = scan_logs(self.workdir)
            self.report.elapsed_s = time.monotonic() - self.t0
        return self.report

    def drain(self) -> None:
        assert self.clients is not None
        deadline = time.monotonic() + self.cfg.drain_timeout_s
        ids = {s.task_id for s in self.clients.acked if s.task_id}
        _log(f"all faults done; waiting for {len(ids)} tasks to end")
        with self.clients.client() as client:
            while time.monotonic() < deadline:
                tasks = self.api_tasks(client)
                if tasks is not None:
                    open_ = [t for t in tasks if t["status"] not in TERMINAL]
                    if not open_ and ids <= {t["id"] for t in tasks}:
                        break
                time.sleep(1.0)
        time.sleep(3.0)  # a zombie that is about to write has its chance: the audit must see it

    def audit(self, plan: list[Submission]) -> None:
        assert self.clients is not None and self.bucket is not None
        self.stop.set()  # the monitor's last pass is done
        r = self.report
        c = self.clients
        r.calls, r.transport_errors = c.calls, sum(c.transport_errors.values())
        r.server_errors, r.bad_5xx = c.server_errors, list(c.bad_5xx)
        r.submissions, r.unacked, r.rejected = len(plan), len(c.unacked), list(c.rejected)
        with c.client() as client:
            tasks = None
            for _ in range(30):
                tasks = self.api_tasks(client)
                if tasks is not None:
                    break
                time.sleep(2)
            if tasks is None:
                raise RuntimeError("the API does not list tasks at the end of the run")
        r.tasks = len(tasks)
        by_key: dict[str, list[dict[str, Any]]] = {}
        for t in tasks:
            by_key.setdefault(t.get("idempotency_key") or "", []).append(t)
            r.by_status[t["status"]] += 1
            r.by_kind[t["kind"]] += 1
        for sub in plan:
            found = by_key.get(sub.key, [])
            if not found:
                r.lost.append(f"{sub.key} ({sub.kind}, acknowledged as {sub.task_id})")
            elif len(found) > 1:
                r.duplicated.append(f"{sub.key}: {len(found)} tasks")
            elif sub.task_id and found[0]["id"] != sub.task_id:
                r.duplicated.append(
                    f"{sub.key}: acknowledged {sub.task_id}, stored {found[0]['id']}"
                )
        for t in tasks:
            history = t.get("history") or []
            outcomes = [h.get("outcome") for h in history]
            r.retries += max(0, int(t.get("attempts") or 0) - 1)
            r.releases += outcomes.count("released")
            if outcomes.count("completed") > 1:
                r.duplicated.append(f"{t['id']}: completed {outcomes.count('completed')} times")
            if t["status"] in ("pending", "processing"):
                r.stuck.append(f"{t['id']} {t['kind']} {t['status']} ({outcomes})")
            elif t["status"] in ("failed", "cancelled"):
                r.failed.append(
                    f"{t['id']} {t['kind']} {t['status']}: {(t.get('error') or '')[:100]} "
                    f"(history {outcomes})"
                )
            elif t["status"] == "completed":
                self.audit_outputs(t)

    def audit_outputs(self, t: dict[str, Any]) -> None:
        assert self.bucket is not None
        r = self.report
        finished = datetime.fromisoformat(t["finished_at"]).timestamp()
        recorded = {o["key"]: o for o in t.get("outputs") or []}
        snap = self.snapshots.get(t["id"])
        for key in self.expected_keys(t):
            if key not in recorded:
                r.missing_outputs.append(f"{t['id']} {t['kind']}: {key} not in the task's outputs")
            try:
                h = self.bucket.history(key)
            except Exception as exc:
                r.missing_outputs.append(f"{t['id']}: cannot list versions of {key}: {exc}")
                continue
            if not h.present:
                what = "deleted" if h.versions else "never written"
                r.missing_outputs.append(f"{t['id']} {t['kind']}: {key} {what}")
            latest = h.latest
            if snap is not None and key in snap.keys:
                new = [v for v in h.versions if str(v.get("VersionId")) not in snap.keys[key]]
                seen_etags = {
                    v.get("ETag")
                    for v in h.versions
                    if str(v.get("VersionId")) in snap.keys[key] and not v.get("delete_marker")
                }
                for v in new:
                    act = "deleted" if v.get("delete_marker") else "rewritten"
                    if act == "rewritten":
                        same = v.get("ETag") in seen_etags
                        act += " (same content)" if same else " (other content)"
                    late = version_time(v) - finished
                    r.rewritten.append(
                        f"{t['id']} {t['kind']}: {key} {act} {late:.1f} s after completion,"
                        " after the task was seen completed with its outputs"
                    )
            # The committed content: what the completing attempt wrote before it completed
            # (outputs written in place), or else the first copy made after (outputs staged,
            # then committed). After completion, only that content may land, and nothing
            # may be deleted.
            snapped = snap.keys.get(key, set()) if snap is not None else None
            ordered = sorted(h.versions, key=version_time)
            before = [
                v for v in ordered if version_time(v) <= finished and not v.get("delete_marker")
            ]
            after = [v for v in ordered if version_time(v) > finished]
            committed = before[-1].get("ETag") if before else None
            if committed is None:
                committed = next((v.get("ETag") for v in after if not v.get("delete_marker")), None)
            for v in after:
                if snapped is not None and str(v.get("VersionId")) not in snapped:
                    continue  # counted above
                late = version_time(v) - finished
                if v.get("delete_marker"):
                    r.rewritten.append(
                        f"{t['id']} {t['kind']}: {key} deleted {late:.1f} s after completion"
                    )
                elif v.get("ETag") != committed:
                    r.rewritten.append(
                        f"{t['id']} {t['kind']}: {key} written {late:.1f} s after completion"
                        " with content other than the completing attempt's"
                    )
            if latest and not latest.get("delete_marker") and key in recorded:
                size = int(recorded[key].get("size") or 0)
                if size and int(latest.get("Size") or 0) != size:
                    r.rewritten.append(
                        f"{t['id']}: {key} holds {latest.get('Size')} bytes, the task says {size}"
                    )
        if t["kind"] == "container":
            done = [h for h in t.get("history") or [] if h.get("outcome") == "completed"]
            want = f"attempt={done[-1]['number']}" if done else "?"
            try:
                got = self.bucket.read(f"{t['id']}/result.txt").decode(errors="replace").strip()
            except Exception as exc:
                got = f"(unreadable: {type(exc).__name__})"
            if got != want:
                r.wrong_result.append(f"{t['id']}: result.txt says {got!r}, completed by {want!r}")


def scan_logs(workdir: Path) -> Counter[str]:
    """Errors in the processes' logs, by process and message (for the report, not the verdict).

    An ERROR line counts by its message; a traceback by its last line (the exception).
    """
    out: Counter[str] = Counter()
    ids = re.compile(r"\b[0-9a-z]{26}\b|0x[0-9a-f]+|port \d+")
    for log in sorted(workdir.glob("*.log")):
        try:
            lines = log.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for i, line in enumerate(lines):
            text = ""
            if " ERROR " in line:
                text = line.split(": ", 1)[-1]
            elif line.startswith("Traceback"):
                for nxt in lines[i + 1 : i + 200]:
                    if nxt and not nxt.startswith(" "):
                        text = nxt
                        break
            if text:
                out[f"{log.stem}: {ids.sub('<id>', text)[:110]}"] += 1
    return out


@contextlib.contextmanager
def workdir_for(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="conveyor-faultrun-"))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--large", action="store_true", help="160 tasks, all faults, two rounds")
    p.add_argument("--tasks", type=int)
    p.add_argument("--rounds", type=int)
    p.add_argument("--all-faults", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the logs and data (path printed)")
    args = p.parse_args(argv)
    cfg = RunConfig.large() if args.large else RunConfig.default()
    if args.tasks:
        cfg.tasks = args.tasks
    if args.rounds:
        cfg.rounds = args.rounds
    if args.all_faults:
        cfg.all_faults = True
    with workdir_for(args.keep) as workdir:
        report = FaultRun(cfg, workdir).run()
        print(report.table())
        for line in report.faults:
            print("  fault:", line)
        for line, n in report.log_errors.most_common(15):
            print(f"  log: {n:4d} x {line}")
        failures = report.failures()
        for line in failures:
            print("  FAIL:", line)
        if args.keep:
            print(f"logs and data kept in {workdir}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
