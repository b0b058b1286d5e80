"""Conveyor beside Celery, RQ, procrastinate, huey and dramatiq, end to end, on this machine.

    python bench/peers.py [--systems all|conveyor-sqlite,celery-always,...] [--tasks 5000]
                          [--reps 3] [--latency-samples 60] [--redelivery-timeout 150]
                          [--no-redelivery] [--no-ablation] [--concurrency 8] [--quick]
                          [--conveyor-log-level warning|info]

Every system runs real worker processes with a no-op task (one byte appended to a
counter file, the same for every system, so the bench can tell when a queue is
drained without asking the system).  Conveyor's no-op is a processor registered
through the ``conveyor.processors`` entry point of a test-only distribution (a
``dist-info`` folder on ``PYTHONPATH``, as ``tests/integration/test_toy_kind.py``
does), run by ``conveyor worker`` processes, which log warnings only, as the peers'
workers are run (``--conveyor-log-level info`` adds the two process-log lines a task;
the task's own log, in the database, is written either way); the peers are installed by the bench
into a virtualenv of their own under /tmp (never dependencies of Conveyor).
Redis is Debian's ``redis-server`` (``make bench`` installs it), started here on
127.0.0.1 on free ports, once with ``appendfsync everysec`` and once with
``appendfsync always``; PostgreSQL is a throwaway cluster as in the tests
(``tests/pgserver.py``), fsync on and ``synchronous_commit = on``.

Measured per system, over ``--reps`` repetitions with the systems interleaved
(repetition-major order), reported as median and range:

* enqueue: ``--tasks`` tasks from one client process, one call per task (single)
  and with the system's bulk call where it has one;
* drain: the worker processes (1, then 2) are started on the empty queue, made
  ready, stopped with SIGSTOP while the tasks are enqueued, and continued
  together with SIGCONT; the rate is tasks / (SIGCONT to the last task's byte);
* idle latency: one idle worker; a client in another process submits one task at
  a time at random moments, the task writes when it started: p50 and p95 of
  start - submit;

then, once and for every system at the same time, redelivery: a worker starts a
task that sleeps, it is SIGKILLed, a new worker is started at once, and the time
until the task starts again is measured (up to ``--redelivery-timeout``); and the
ablation of Conveyor's per-task cost, in one process per engine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # bench.queue_throughput, tests.pgserver
PEER_VENV = Path(os.environ.get("CONVEYOR_PEERS_VENV", "/tmp/conveyor-peers-venv"))  # nosec B108
PEER_PACKAGES = [
    "celery[redis]",
    "rq",
    "procrastinate",
    "psycopg[binary]",
    "huey",
    "dramatiq[redis]",
    "redis",
]
ALL_SYSTEMS = [
    "conveyor-sqlite",
    "conveyor-pg",
    "celery-everysec",
    "celery-always",
    "procrastinate",
    "huey",
    "rq",
    "dramatiq",
]

# -- the task, for every system -----------------------------------------------------
TASK_BODY = '''
import os, time

_FD = None


def _fd():
    global _FD
    if _FD is None:
        _FD = os.open(os.environ["BENCH_COUNTER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    return _FD


def body(t=None, sleep=None, stop=None):
    """No-op: one byte; a latency sample: "submitted started" on a line; a sleeper:
    "S", then sleep (``stop``: an event that ends the sleep early)."""
    if sleep:
        os.write(_fd(), b"S")
        if stop is not None:
            stop.wait(sleep)
        else:
            time.sleep(sleep)
        return
    if t is not None:
        os.write(_fd(), ("%r %r\\n" % (t, time.time())).encode())
        return
    os.write(_fd(), b".")


def ready():
    d = os.environ.get("BENCH_READY")
    if d:
        open(os.path.join(d, str(os.getpid())), "w").close()
'''

CONVEYOR_NOOP = '''
"""The bench's no-op kind (bench/peers.py)."""
from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from conveyor.processors.base import Processor, ProcessorContext
import benchbody


class NoopParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    t: float | None = None
    sleep: float | None = None


class NoopProcessor(Processor):
    kind: ClassVar[str] = "noop"
    params_model: ClassVar[type[BaseModel]] = NoopParams

    def requires_input(self) -> bool:
        return False

    def probe(self):
        benchbody.ready()
        return {}

    def run(self, ctx: ProcessorContext):
        p = ctx.task.params
        benchbody.body(p.get("t"), p.get("sleep"), ctx.cancel_event)
        return []
'''

PEER_MODULES = {
    "p_celery": """
import os
from celery import Celery
import benchbody
benchbody.ready()
app = Celery("p_celery", broker=os.environ["BENCH_REDIS"])
app.conf.update(worker_hijack_root_logger=False, task_ignore_result=True,
                broker_connection_retry_on_startup=True)
if os.environ.get("BENCH_REDELIVERY"):
    app.conf.update(task_acks_late=True, task_reject_on_worker_lost=True,
                    broker_transport_options={"visibility_timeout": 30})

@app.task(name="noop")
def noop(t=None, sleep=None):
    benchbody.body(t, sleep)
""",
    "p_rq": """
import os
import redis
from rq import Queue
import benchbody
benchbody.ready()
conn = redis.Redis.from_url(os.environ["BENCH_REDIS"])
q = Queue("bench", connection=conn)

def noop(t=None, sleep=None):
    benchbody.body(t, sleep)
""",
    "p_huey": """
import os
from huey import SqliteHuey
import benchbody
benchbody.ready()
huey = SqliteHuey(filename=os.environ["BENCH_HUEY_DB"])

@huey.task()
def noop(t=None, sleep=None):
    benchbody.body(t, sleep)
""",
    "p_dramatiq": """
import os
import dramatiq
from dramatiq.brokers.redis import RedisBroker
import benchbody
benchbody.ready()
dramatiq.set_broker(RedisBroker(url=os.environ["BENCH_REDIS"]))

@dramatiq.actor(max_retries=0, time_limit=24 * 3600 * 1000)
def noop(t=None, sleep=None):
    benchbody.body(t, sleep)
""",
    "p_procrastinate": """
import os
import procrastinate
import benchbody
benchbody.ready()
app = procrastinate.App(
    connector=procrastinate.SyncPsycopgConnector(conninfo=os.environ["BENCH_PG"])
    if os.environ.get("BENCH_SYNC")
    else procrastinate.PsycopgConnector(conninfo=os.environ["BENCH_PG"])
)

@app.task(name="noop")
def noop(t=None, sleep=None):
    benchbody.body(t, sleep)
""",
}


# -- small helpers ---------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_cmd(port: int, *args: str) -> bytes:
    """One RESP command to 127.0.0.1:port; the raw reply."""
    msg = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(msg.encode())
        return s.recv(65536)


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def kill_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def stop_procs(procs: list[subprocess.Popen[bytes]], grace: float = 5.0) -> None:
    for p in procs:
        kill_group(p, signal.SIGCONT)
        kill_group(p, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        with suppress(subprocess.TimeoutExpired):
            p.wait(max(0.1, deadline - time.monotonic()))
    for p in procs:
        kill_group(p, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            p.wait(5)


def wait_for(cond: Callable[[], bool], timeout: float, what: str, step: float = 0.001) -> float:
    """Poll ``cond`` until true; the monotonic time it became true."""
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(step)


def size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


# -- infrastructure: Redis and PostgreSQL ------------------------------------------------
class Redis:
    def __init__(self, workdir: Path, fsync: str) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise SystemExit("redis-server not found: `make bench` installs it (apt-get)")
        self.port = free_port()
        self.dir = workdir / f"redis-{fsync}"
        self.dir.mkdir()
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                fsync,
                "--save",
                "",
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"
        wait_for(self._up, 20, "redis-server", step=0.05)
        self.fsync = fsync

    def _up(self) -> bool:
        try:
            return redis_cmd(self.port, "PING").startswith(b"+PONG")
        except OSError:
            return False

    def flush(self) -> None:
        redis_cmd(self.port, "FLUSHALL")

    def stop(self) -> None:
        stop_procs([self.proc])


class Postgres:
    def __init__(self) -> None:
        from tests import pgserver

        self.cluster = pgserver.start_cluster(durable=True)
        import psycopg

        with psycopg.connect(self.cluster.admin_url, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET synchronous_commit = on")
            conn.execute("SELECT pg_reload_conf()")
        time.sleep(0.2)
        self._procrastinate_template: str | None = None

    def describe(self) -> str:
        from bench.queue_throughput import describe_postgres

        return describe_postgres(self.cluster.admin_url, "throwaway cluster")

    def conveyor_db(self) -> str:
        return str(self.cluster.create_database())

    def procrastinate_db(self, peer_python: Path, env: dict[str, str]) -> str:
        import psycopg

        if self._procrastinate_template is None:
            url = self.cluster.create_database(migrated=False)
            res = subprocess.run(
                [
                    str(peer_python),
                    "-m",
                    "procrastinate",
                    "--app=p_procrastinate.app",
                    "schema",
                    "--apply",
                ],
                env={**env, "BENCH_PG": url},
                capture_output=True,
                text=True,
            )
            if res.returncode != 0:
                raise RuntimeError(f"procrastinate schema --apply failed:\n{res.stderr[-3000:]}")
            self._procrastinate_template = url.rsplit("/", 1)[1]
        name = f"p_{random.getrandbits(48):012x}"
        with psycopg.connect(self.cluster.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self._procrastinate_template}"')
        return str(self.cluster.url(name))

    def drop(self, url: str) -> None:
        self.cluster.drop_database(url)

    def stop(self) -> None:
        self.cluster.stop()


# -- the systems ---------------------------------------------------------------------------
@dataclass
class Fresh:
    """One empty queue of one system: the environment its workers and clients get."""

    env: dict[str, str]
    cleanup: Callable[[], None] = lambda: None


@dataclass
class System:
    name: str
    label: str
    python: Path
    worker_note: str
    bulk: bool = True

    def worker_cmd(self, bench: Bench) -> list[str]:
        raise NotImplementedError

    def fresh(self, bench: Bench) -> Fresh:
        raise NotImplementedError

    def ready(self, bench: Bench, log: Path) -> bool:
        return True


class ConveyorSystem(System):
    def __init__(self, name: str, engine: str, bench: Bench) -> None:
        self.engine = engine
        sync = "" if engine == "pg" else f" synchronous={bench.sqlite_sync}"
        label = (
            "Conveyor PostgreSQL, synchronous_commit on"
            if engine == "pg"
            else f"Conveyor SQLite, WAL{sync.replace(' synchronous', ' + synchronous')}"
        )
        super().__init__(
            name,
            label,
            Path(sys.executable),
            f"conveyor worker --concurrency {bench.args.concurrency}, "
            f"log level {bench.args.conveyor_log_level.upper()}",
        )

    def worker_cmd(self, bench: Bench) -> list[str]:
        return [
            str(Path(sys.executable).parent / "conveyor"),
            "worker",
            "--concurrency",
            str(bench.args.concurrency),
        ]

    def fresh(self, bench: Bench) -> Fresh:
        data = Path(tempfile.mkdtemp(prefix="conveyor-", dir=bench.workdir))
        pg = bench.pg
        if self.engine == "pg":
            assert pg is not None
            url = pg.conveyor_db()

            def cleanup() -> None:
                pg.drop(url)

        else:
            url = f"sqlite:///{data}/conveyor.db"
            if bench.sqlite_sync != "NORMAL":
                url += f"?synchronous={bench.sqlite_sync.lower()}"

            def cleanup() -> None:
                pass

        env = {
            **bench.conveyor_env,
            "CONVEYOR_DATA_DIR": str(data),
            "CONVEYOR_BACKEND_URL": url,
            "CONVEYOR_STORAGE_URL": f"file://{data}/buckets",
        }
        return Fresh(env, cleanup)

    def ready(self, bench: Bench, log: Path) -> bool:
        if bench.args.conveyor_log_level.upper() not in ("DEBUG", "INFO"):
            return True  # no start line to wait for: the probe's ready file, then a second
        return "started: kinds=" in log.read_text(errors="replace")


class PeerSystem(System):
    def __init__(
        self,
        name: str,
        label: str,
        note: str,
        cmd: list[str],
        fresh: Callable[[Bench], Fresh],
        *,
        bulk: bool,
    ) -> None:
        super().__init__(name, label, PEER_VENV / "bin" / "python", note, bulk)
        self._cmd = cmd
        self._fresh = fresh

    def worker_cmd(self, bench: Bench) -> list[str]:
        return [str(self.python), *self._cmd]

    def fresh(self, bench: Bench) -> Fresh:
        return self._fresh(bench)


def _redis_fresh(which: str) -> Callable[[Bench], Fresh]:
    def make(bench: Bench) -> Fresh:
        r = bench.redis[which]
        r.flush()
        return Fresh({**bench.peer_env, "BENCH_REDIS": r.url}, r.flush)

    return make


def _huey_fresh(bench: Bench) -> Fresh:
    d = Path(tempfile.mkdtemp(prefix="huey-", dir=bench.workdir))
    return Fresh({**bench.peer_env, "BENCH_HUEY_DB": str(d / "huey.db")})


def _procrastinate_fresh(bench: Bench) -> Fresh:
    assert bench.pg is not None
    url = bench.pg.procrastinate_db(PEER_VENV / "bin" / "python", bench.peer_env)
    return Fresh({**bench.peer_env, "BENCH_PG": url}, lambda: bench.pg.drop(url))  # type: ignore[union-attr]


CELERY_WORKER = [
    "-m",
    "celery",
    "-A",
    "p_celery",
    "worker",
    "-P",
    "solo",
    "-l",
    "WARNING",
    "--without-gossip",
    "--without-mingle",
    "--without-heartbeat",
]


def _celery(fsync: str) -> PeerSystem:
    """Celery + Redis, the same worker against the Redis of one appendfsync setting."""
    return PeerSystem(
        f"celery-{fsync}",
        f"Celery + Redis, AOF {fsync}",
        "celery worker -P solo (prefetch x4)",
        CELERY_WORKER,
        _redis_fresh(fsync),
        bulk=False,
    )


def make_systems(bench: Bench) -> dict[str, System]:
    peers: dict[str, System] = {
        "celery-everysec": _celery("everysec"),
        "celery-always": _celery("always"),
        "procrastinate": PeerSystem(
            "procrastinate",
            "procrastinate, PostgreSQL, synchronous_commit on",
            "procrastinate worker (concurrency 1)",
            ["-m", "procrastinate", "--app=p_procrastinate.app", "worker"],
            _procrastinate_fresh,
            bulk=True,
        ),
        "huey": PeerSystem(
            "huey",
            "huey, SQLite WAL + synchronous=FULL (its default)",
            "huey_consumer -w 1 -k thread",
            ["-m", "huey.bin.huey_consumer", "p_huey.huey", "-w", "1", "-k", "thread", "-q"],
            _huey_fresh,
            bulk=False,
        ),
        "rq": PeerSystem(
            "rq",
            "RQ, SimpleWorker, AOF everysec",
            "rq worker -w SimpleWorker",
            [
                "-c",
                "import p_rq, sys; from rq.cli import main; sys.argv = ['rq', 'worker', "
                "'-w', 'rq.worker.SimpleWorker', '-q', '-u', p_rq.os.environ['BENCH_REDIS'], "
                "'bench']; main()",
            ],
            _redis_fresh("everysec"),
            bulk=True,
        ),
        "dramatiq": PeerSystem(
            "dramatiq",
            "dramatiq + Redis, AOF everysec",
            "dramatiq --processes 1 --threads 8",
            ["-m", "dramatiq", "p_dramatiq", "--processes", "1", "--threads", "8"],
            _redis_fresh("everysec"),
            bulk=False,
        ),
    }
    out: dict[str, System] = {
        "conveyor-sqlite": ConveyorSystem("conveyor-sqlite", "sqlite", bench),
        "conveyor-pg": ConveyorSystem("conveyor-pg", "pg", bench),
    }
    out.update(peers)
    return out


# -- the client side: enqueue and latency, in the system's own interpreter ---------------
def client_main(argv: list[str]) -> int:
    """``peers.py _client SYSTEM MODE N``: run in the system's interpreter; prints JSON."""
    name, mode, n = argv[0], argv[1], int(argv[2])
    enqueue, bulk = _client_for(name)
    out: dict[str, Any] = {}
    if mode == "single":
        start = time.perf_counter()
        for _ in range(n):
            enqueue({})
        out["rate"] = n / (time.perf_counter() - start)
    elif mode == "bulk":
        if bulk is None:
            for _ in range(n):
                enqueue({})
            out["rate"] = None
        else:
            start = time.perf_counter()
            for i in range(0, n, 1000):
                bulk(min(1000, n - i))
            out["rate"] = n / (time.perf_counter() - start)
    elif mode == "latency":
        counter = Path(os.environ["BENCH_COUNTER"])
        rng = random.Random(11)
        lat = []

        def lines() -> int:
            return counter.read_bytes().count(b"\n")

        for i in range(n):
            time.sleep(rng.uniform(0.02, 0.08))
            enqueue({"t": time.time()})
            wait_for(lambda i=i: lines() > i, 30, "a latency sample")  # type: ignore[misc]
        for line in counter.read_text().splitlines():
            sent, started = (float(x) for x in line.split())
            lat.append((started - sent) * 1000)
        out["latencies_ms"] = lat
    elif mode == "sleeper":
        enqueue({"sleep": 3600.0})
    print(json.dumps(out), flush=True)
    return 0


def _client_for(
    name: str,
) -> tuple[Callable[[dict[str, Any]], None], Callable[[int], None] | None]:
    if name.startswith("conveyor"):
        from conveyor.config import load_settings
        from conveyor.server.runtime import build_service
        from conveyor.service import SubmitRequest

        service = build_service(load_settings())

        def conveyor_enqueue(params: dict[str, Any]) -> None:
            service.submit(SubmitRequest(kind="noop", params=params))

        submit_many = getattr(service.backend, "submit_many", None)
        conveyor_bulk = None
        if submit_many is not None:
            from conveyor.models import Task

            def conveyor_bulk(k: int) -> None:
                submit_many([Task(kind="noop") for _ in range(k)])

        return conveyor_enqueue, conveyor_bulk
    if name.startswith("celery"):
        import p_celery  # type: ignore[import-not-found]

        return lambda p: p_celery.noop.delay(**p), None
    if name == "rq":
        import p_rq  # type: ignore[import-not-found]

        def rq_bulk(k: int) -> None:
            p_rq.q.enqueue_many([p_rq.Queue.prepare_data(p_rq.noop) for _ in range(k)])

        return lambda p: p_rq.q.enqueue(p_rq.noop, **p), rq_bulk
    if name == "huey":
        import p_huey  # type: ignore[import-not-found]

        return lambda p: p_huey.noop(**p), None
    if name == "dramatiq":
        import p_dramatiq  # type: ignore[import-not-found]

        return lambda p: p_dramatiq.noop.send(**p), None
    if name == "procrastinate":
        os.environ["BENCH_SYNC"] = "1"  # a synchronous client: the sync connector
        import p_procrastinate  # type: ignore[import-not-found]

        p_procrastinate.app.open()

        def procrastinate_bulk(k: int) -> None:
            p_procrastinate.noop.batch_defer(*[{} for _ in range(k)])

        return lambda p: p_procrastinate.noop.defer(**p), procrastinate_bulk
    raise SystemExit(f"unknown system {name}")


# -- the bench ------------------------------------------------------------------------------
@dataclass
class Results:
    single: dict[str, list[float]] = field(default_factory=dict)
    bulk: dict[str, list[float]] = field(default_factory=dict)
    drain1: dict[str, list[float]] = field(default_factory=dict)
    drain2: dict[str, list[float]] = field(default_factory=dict)
    lat50: dict[str, list[float]] = field(default_factory=dict)
    lat95: dict[str, list[float]] = field(default_factory=dict)
    redelivery: dict[str, float | None] = field(default_factory=dict)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(tempfile.mkdtemp(prefix="conveyor-peers-"))
        self.sqlite_sync = args.sqlite_synchronous.upper()
        self.redis: dict[str, Redis] = {}
        self.pg: Postgres | None = None
        site = self.workdir / "site"
        site.mkdir()
        (site / "benchbody.py").write_text(TASK_BODY)
        (site / "benchnoop.py").write_text(CONVEYOR_NOOP)
        info = site / "benchnoop-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: benchnoop\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(
            "[conveyor.processors]\nnoop = benchnoop:NoopProcessor\n"
        )
        for mod, text in PEER_MODULES.items():
            (site / f"{mod}.py").write_text(textwrap.dedent(text))
        self.site = site
        base = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "BENCH_"))}
        base["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p
        )
        self.conveyor_env = {
            **base,
            "CONVEYOR_CONFIG": str(self.workdir / "none.yaml"),
            "CONVEYOR_LOG_LEVEL": args.conveyor_log_level.upper(),
        }
        if args.prefetch is not None:
            self.conveyor_env["CONVEYOR_PREFETCH"] = str(args.prefetch)
        self.peer_env = dict(base)
        self.results = Results()

    # -- set-up --------------------------------------------------------------------
    def ensure_peers(self, systems: list[str]) -> None:
        if not any(not s.startswith("conveyor") for s in systems):
            return
        py = PEER_VENV / "bin" / "python"
        stamp = PEER_VENV / ".bench-packages"
        if py.exists() and stamp.exists() and stamp.read_text() == " ".join(PEER_PACKAGES):
            return
        print(f"installing the peers into {PEER_VENV} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *PEER_PACKAGES], check=True)
        stamp.write_text(" ".join(PEER_PACKAGES))

    def start_infra(self, systems: list[str]) -> None:
        if any(s in systems for s in ("celery-everysec", "rq", "dramatiq")):
            self.redis["everysec"] = Redis(self.workdir, "everysec")
        if "celery-always" in systems:
            self.redis["always"] = Redis(self.workdir, "always")
        if any(s in systems for s in ("conveyor-pg", "procrastinate")):
            self.pg = Postgres()

    def stop_infra(self) -> None:
        for r in self.redis.values():
            r.stop()
        if self.pg is not None:
            self.pg.stop()

    def versions(self) -> str:
        out = []
        if (PEER_VENV / "bin" / "python").exists():
            res = subprocess.run(
                [
                    str(PEER_VENV / "bin" / "python"),
                    "-c",
                    "from importlib.metadata import version as v; print(' '.join("
                    "f'{p} {v(p)}' for p in ('celery', 'kombu', 'redis', 'rq', "
                    "'procrastinate', 'psycopg', 'huey', 'dramatiq')))",
                ],
                capture_output=True,
                text=True,
            )
            out.append(res.stdout.strip())
        from conveyor import __version__

        out.insert(0, f"conveyor {__version__}")
        redis_v = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
        out.append(redis_v.stdout.split(" sha=")[0].replace("Redis server v=", "redis "))
        return "; ".join(out)

    # -- one queue's runs -------------------------------------------------------------
    def client(self, system: System, fresh: Fresh, mode: str, n: int, counter: Path) -> Any:
        env = {**fresh.env, "BENCH_COUNTER": str(counter)}
        res = subprocess.run(
            [
                str(system.python),
                str(Path(__file__).resolve()),
                "_client",
                system.name,
                mode,
                str(n),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if res.returncode != 0:
            raise RuntimeError(f"{system.name} client {mode} failed:\n{res.stderr[-3000:]}")
        return json.loads(res.stdout.strip().splitlines()[-1])

    @contextmanager
    def workers(
        self,
        system: System,
        fresh: Fresh,
        k: int,
        counter: Path,
        *,
        extra: dict[str, str] | None = None,
    ) -> Iterator[list[subprocess.Popen[bytes]]]:
        ready = Path(tempfile.mkdtemp(prefix="ready-", dir=self.workdir))
        counter.touch()
        procs: list[subprocess.Popen[bytes]] = []
        logs = []
        try:
            for i in range(k):
                log = ready.parent / f"{ready.name}-w{i}.log"
                logs.append(log)
                env = {
                    **fresh.env,
                    "BENCH_COUNTER": str(counter),
                    "BENCH_READY": str(ready),
                    **(extra or {}),
                }
                with open(log, "wb") as out:
                    procs.append(
                        subprocess.Popen(
                            system.worker_cmd(self),
                            env=env,
                            cwd=self.site,
                            stdout=out,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,
                        )
                    )

            def up() -> bool:
                for p, log in zip(procs, logs, strict=True):
                    if p.poll() is not None:
                        tail = log.read_text(errors="replace")[-3000:]
                        raise RuntimeError(f"{system.name} worker exited:\n{tail}")
                return len(list(ready.iterdir())) >= k and all(
                    system.ready(self, lg) for lg in logs
                )

            wait_for(up, 120, f"{system.name} workers", step=0.05)
            time.sleep(1.0)  # connected and waiting
            yield procs
        finally:
            stop_procs(procs)

    def drain(self, system: System, k: int, bulk: bool) -> tuple[float | None, float]:
        fresh = system.fresh(self)
        try:
            counter = self.workdir / f"count-{system.name}-{k}-{random.getrandbits(32):x}"
            n = self.args.tasks
            with self.workers(system, fresh, k, counter) as procs:
                for p in procs:
                    kill_group(p, signal.SIGSTOP)
                got = self.client(system, fresh, "bulk" if bulk else "single", n, counter)
                time.sleep(0.2)
                t0 = time.monotonic()
                for p in procs:
                    kill_group(p, signal.SIGCONT)
                t1 = wait_for(
                    lambda: size_of(counter) >= n, max(120.0, n / 20), f"{system.name} drain"
                )
            return got.get("rate"), n / (t1 - t0)
        finally:
            fresh.cleanup()

    def latency(self, system: System) -> list[float]:
        fresh = system.fresh(self)
        try:
            counter = self.workdir / f"lat-{system.name}-{random.getrandbits(32):x}"
            with self.workers(system, fresh, 1, counter):
                got = self.client(system, fresh, "latency", self.args.latency_samples, counter)
            return list(got["latencies_ms"])
        finally:
            fresh.cleanup()

    def redelivery(self, system: System) -> float | None:
        fresh = system.fresh(self)
        extra = {"BENCH_REDELIVERY": "1"}
        counter = self.workdir / f"redeliver-{system.name}"
        try:
            first = self.workers(system, fresh, 1, counter, extra=extra)
            procs = first.__enter__()
            try:
                self.client(system, fresh, "sleeper", 1, counter)
                wait_for(lambda: size_of(counter) >= 1, 60, f"{system.name} sleeper", step=0.01)
                for p in procs:
                    kill_group(p, signal.SIGKILL)
                killed = time.monotonic()
            finally:
                first.__exit__(None, None, None)
            with self.workers(system, fresh, 1, counter, extra=extra):
                try:
                    again = wait_for(
                        lambda: size_of(counter) >= 2,
                        max(0.0, self.args.redelivery_timeout - (time.monotonic() - killed)),
                        "redelivery",
                        step=0.05,
                    )
                except TimeoutError:
                    return None
            return again - killed
        finally:
            fresh.cleanup()

    # -- the runs -------------------------------------------------------------------------
    def run(self, systems: list[System]) -> None:
        # imported here: this file's client side runs in the peers' venv, without Conveyor
        from bench.queue_throughput import percentile

        r = self.results
        for rep in range(1, self.args.reps + 1):
            for s in systems:
                print(f"[rep {rep}] {s.name} (load {loadavg()})", flush=True)
                single, d1 = self.drain(s, 1, bulk=False)
                r.single.setdefault(s.name, []).append(single or float("nan"))
                r.drain1.setdefault(s.name, []).append(d1)
                bulk, d2 = self.drain(s, 2, bulk=s.bulk)
                if s.bulk and bulk is not None:
                    r.bulk.setdefault(s.name, []).append(bulk)
                r.drain2.setdefault(s.name, []).append(d2)
                lat = self.latency(s)
                r.lat50.setdefault(s.name, []).append(statistics.median(lat))
                r.lat95.setdefault(s.name, []).append(percentile(lat, 95))
                print(
                    f"    enqueue {single:,.0f}/s, bulk {bulk or 0:,.0f}/s; drain {d1:,.0f}/s (1), "
                    f"{d2:,.0f}/s (2); latency p50 {statistics.median(lat):.1f} ms, "
                    f"p95 {percentile(lat, 95):.1f} ms",
                    flush=True,
                )
        if not self.args.no_redelivery:
            print(
                f"redelivery after SIGKILL, all systems at once, up to "
                f"{self.args.redelivery_timeout:g} s (load {loadavg()})",
                flush=True,
            )
            out: dict[str, float | None] = {}

            def one(s: System) -> None:
                try:
                    out[s.name] = self.redelivery(s)
                except Exception as exc:  # reported, not fatal
                    print(f"    {s.name}: redelivery run failed: {exc}", flush=True)
                    out[s.name] = None

            threads = [threading.Thread(target=one, args=(s,)) for s in systems]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            r.redelivery = out


def fmt(values: list[float] | None, unit: str = "", digits: int = 0) -> str:
    vals = [v for v in (values or []) if v == v]  # drop NaN
    if not vals:
        return "—"
    med = statistics.median(vals)
    if len(vals) == 1:
        return f"{med:,.{digits}f}{unit}"
    return f"{med:,.{digits}f}{unit} ({min(vals):,.{digits}f}–{max(vals):,.{digits}f})"


def report(bench: Bench, systems: list[System]) -> None:
    r = bench.results
    print()
    print(
        f"{bench.args.tasks} no-op tasks; {bench.args.reps} interleaved repetitions: "
        "median (min–max); idle latency over "
        f"{bench.args.latency_samples} samples per repetition."
    )
    head = (
        "| system (durable setting) | enqueue/s, single | enqueue/s, bulk | drain/s, 1 worker | "
        "drain/s, 2 workers | idle submit→start p50 / p95 ms | redelivered after SIGKILL |"
    )
    print(head)
    print("|" + "---|" * 7)
    for s in systems:
        red = "—"
        if s.name in r.redelivery:
            got = r.redelivery[s.name]
            red = (
                f"no (≥ {bench.args.redelivery_timeout:g} s)"
                if got is None
                else f"yes, {got:.0f} s"
            )
        lat = f"{fmt(r.lat50.get(s.name), digits=1)} / {fmt(r.lat95.get(s.name), digits=1)}"
        print(
            f"| {s.label} | {fmt(r.single.get(s.name))} | {fmt(r.bulk.get(s.name))} | "
            f"{fmt(r.drain1.get(s.name))} | {fmt(r.drain2.get(s.name))} | {lat} | {red} |"
        )
    print()
    print("Workers: " + "; ".join(f"{s.name}: {s.worker_note}" for s in systems))


# -- the ablation: Conveyor's per-task cost, in one process --------------------------------
def ablation_main(argv: list[str]) -> int:
    """``peers.py _ablation N``: run with the Conveyor env of one engine; prints lines."""
    n = int(argv[0])
    from conveyor.backends import open_backend
    from conveyor.config import load_settings
    from conveyor.models import Task, utcnow
    from conveyor.processors import ProcessorRegistry
    from conveyor.storage import open_storage
    from conveyor.worker.loop import Worker

    settings = load_settings()
    registry = ProcessorRegistry.load(settings)
    probe = Worker(
        settings,
        open_backend(settings.backend_url),
        open_storage(settings.storage_url),
        registry,
        concurrency=1,
    )
    kinds, gpus = probe.kinds, probe.gpus
    probe.queue.close()
    steps: list[tuple[str, Callable[[Any], int]]] = []

    def fill(backend: Any) -> None:
        submit_many = getattr(backend, "submit_many", None)
        tasks = [Task(kind="noop") for _ in range(n)]
        if submit_many is not None:
            submit_many(tasks)
        else:
            for t in tasks:
                backend.submit(t)

    def loop(
        kinds_: list[str], max_gpus: int | None, logs: int, batch: int = 1
    ) -> Callable[[Any], int]:
        def run(backend: Any) -> int:
            done = 0
            while claimed := backend.claim("abl", kinds_, batch, 60.0, max_gpus):
                for c in claimed:
                    if logs:
                        backend.append_logs(c.task.id, c.lease.attempt, [(utcnow(), "worker", "x")])
                    backend.complete(c.lease, [])
                    if logs > 1:
                        backend.append_logs(c.task.id, c.lease.attempt, [(utcnow(), "worker", "y")])
                    done += 1
            return done

        return run

    steps.append(("claim + complete, one task a call", loop(["noop"], None, 0)))
    steps.append(
        (f"... with the worker's kinds ({len(kinds)}) and max_gpus={gpus}", loop(kinds, gpus, 0))
    )
    steps.append(("... plus two append_logs per task", loop(kinds, gpus, 2)))
    conc = int(os.environ.get("BENCH_CONCURRENCY", "8"))

    def batched(backend: Any) -> int:
        from conveyor.backends.base import Completion

        done = 0
        while claimed := backend.claim("abl", kinds, conc, 60.0, gpus):
            items = [
                Completion(c.lease, [], [(utcnow(), "worker", "x"), (utcnow(), "worker", "y")])
                for c in claimed
            ]
            backend.complete_many(items)
            done += len(claimed)
        return done

    from conveyor.backends.base import WorkerQueue

    if hasattr(WorkerQueue, "complete_many"):
        steps.append((f"claim({conc}) + complete_many({conc}), the two lines in it", batched))

    def real_worker(backend: Any) -> int:
        w = Worker(
            settings,
            backend,
            open_storage(settings.storage_url),
            registry,
            store=backend,
            concurrency=conc,
        )
        counter = Path(os.environ["BENCH_COUNTER"])
        start = size_of(counter)
        w.start()
        try:
            wait_for(lambda: size_of(counter) - start >= n, 600, "the in-process worker", 0.002)
        finally:
            w.stop(grace=5)
        return n

    steps.append((f"the Worker object in this process (concurrency {conc})", real_worker))
    for label, step in steps:
        backend = open_backend(settings.backend_url)
        try:
            fill(backend)
            start = time.perf_counter()
            done = step(backend)
            rate = done / (time.perf_counter() - start)
        finally:
            backend.close()
        print(json.dumps({"step": label, "rate": rate}), flush=True)
    return 0


def ablation(bench: Bench, system: ConveyorSystem) -> list[tuple[str, float]]:
    fresh = system.fresh(bench)
    try:
        counter = bench.workdir / f"ablation-{system.name}"
        env = {
            **fresh.env,
            "BENCH_COUNTER": str(counter),
            "BENCH_CONCURRENCY": str(bench.args.concurrency),
        }
        res = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "_ablation", str(bench.args.tasks)],
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
            cwd=bench.site,
        )
        if res.returncode != 0:
            raise RuntimeError(f"ablation failed:\n{res.stderr[-3000:]}")
        rows = [json.loads(ln) for ln in res.stdout.splitlines() if ln.startswith("{")]
        return [(r["step"], r["rate"]) for r in rows]
    finally:
        fresh.cleanup()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_client":
        return client_main(argv[1:])
    if argv and argv[0] == "_ablation":
        return ablation_main(argv[1:])
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument(
        "--systems", default="all", help="comma-separated, or all: " + ",".join(ALL_SYSTEMS)
    )
    ap.add_argument("--tasks", type=int, default=5000, help="tasks per enqueue/drain run")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (interleaved)")
    ap.add_argument("--latency-samples", type=int, default=60, help="idle latency samples per rep")
    ap.add_argument("--redelivery-timeout", type=float, default=150.0)
    ap.add_argument("--no-redelivery", action="store_true")
    ap.add_argument("--no-ablation", action="store_true")
    ap.add_argument("--concurrency", type=int, default=8, help="conveyor worker --concurrency")
    ap.add_argument(
        "--prefetch", type=int, default=None, help="CONVEYOR_PREFETCH (default: the worker's)"
    )
    ap.add_argument(
        "--sqlite-synchronous",
        default="full",
        help="Conveyor's SQLite synchronous setting (full: huey's default; normal)",
    )
    ap.add_argument(
        "--conveyor-log-level",
        default="warning",
        help="Conveyor's process log level (warning: as the peers run, celery -l WARNING, "
        "huey -q, rq -q; info adds two lines a task; a task's own log is written either way)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="a first look: 2000 tasks, one repetition, 20 latency samples, no redelivery "
        "and no ablation (the closing figures come from a full run)",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.tasks, args.reps, args.latency_samples = 2000, 1, 20
        args.no_redelivery = args.no_ablation = True
    names = ALL_SYSTEMS if args.systems == "all" else [s.strip() for s in args.systems.split(",")]
    unknown = set(names) - set(ALL_SYSTEMS)
    if unknown:
        raise SystemExit(f"unknown system(s): {', '.join(sorted(unknown))}")
    bench = Bench(args)
    try:
        bench.ensure_peers(names)
        bench.start_infra(names)
        systems = [make_systems(bench)[n] for n in names]
        print("Conveyor beside its peers (bench/peers.py)")
        print(
            f"{bench.versions()}; python {sys.version.split()[0]}; {os.cpu_count()} cores; "
            f"load {loadavg()} at start"
        )
        if bench.pg is not None:
            print(bench.pg.describe())
        bench.run(systems)
        report(bench, systems)
        if not args.no_ablation:
            for s in systems:
                if isinstance(s, ConveyorSystem):
                    print(
                        f"\nAblation, {s.label}: {args.tasks} tasks, one process (load {loadavg()})"
                    )
                    rows = ablation(bench, s)
                    for label, rate in rows:
                        print(f"  {label:<64} {rate:>9,.0f} tasks/s")
        print(f"\nload {loadavg()} at the end")
    finally:
        bench.stop_infra()
        if not args.keep:
            shutil.rmtree(bench.workdir, ignore_errors=True)
        else:
            print(f"kept {bench.workdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
