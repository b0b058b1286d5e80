"""A throwaway PostgreSQL cluster for tests.

``initdb`` + ``pg_ctl`` on 127.0.0.1 and a free port, trust auth, fsync off;
started once per test process (lazily: SQLite-only runs never start it) and
stopped with ``pg_ctl stop -m immediate`` at the end (the postmaster is
killed by PID if that fails).  When ``CONVEYOR_TEST_PG_URL`` is set, that
server is used instead (its user must be allowed to create databases).

Each test gets a database of its own, copied from a template that already
holds the current schema, so tests never see each other's rows and never
pay for the migrations.

When the PostgreSQL binaries are missing the tests fail under CI=true and
skip elsewhere, so CI never passes by skipping.

Use from tests:

* ``pg_cluster`` (session fixture) -> :class:`PgCluster`
* ``pg_url`` (fixture) -> the URL of a fresh, migrated database
* ``pg_empty_url`` (fixture) -> the URL of a fresh database with no schema
* :func:`fresh_database`, :func:`require_cluster` outside fixtures (e.g. in
  an engine factory), which is also how a module can use them without
  importing the fixtures: ``pg_url = pgserver.pg_url`` in the test module.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
EXTERNAL_URL_ENV = "CONVEYOR_TEST_PG_URL"
TEMPLATE_DB = "conveyor_template"
USER = "conveyor"
RUN_AS = "postgres"  # initdb/pg_ctl refuse to run as root
TRUNCATE = (
    "TRUNCATE tasks, task_logs, workers, auth_tokens, auth_secrets, auth_nonces, audit_log, "
    "events, events_cursor, events_config, events_progress, webhook_endpoints, "
    "webhook_deliveries RESTART IDENTITY"
)

_lock = threading.Lock()
_cluster: PgCluster | None = None
_unavailable: str | None = None


def find_pg_bin() -> Path | None:
    """Directory holding ``initdb`` and ``pg_ctl``: PATH, /usr/local/bin, Debian's layout."""
    candidates: list[Path] = []
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    candidates.append(Path("/usr/local/bin"))
    candidates.append(Path("/usr/local/pgsql/bin"))
    debian = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit() else 0,
        reverse=True,
    )
    candidates.extend(Path(p) for p in debian)
    for d in candidates:
        if (d / "initdb").exists() and (d / "pg_ctl").exists():
            return d
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _with_db(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + quote(dbname)))


class PgCluster:
    """A running server: a local throwaway cluster or an external one."""

    def __init__(
        self,
        admin_url: str,
        *,
        bindir: Path | None = None,
        base: Path | None = None,
        as_user: str | None = None,
    ) -> None:
        self.admin_url = admin_url  # a database we may connect to for CREATE DATABASE
        self.bindir = bindir
        self.base = base  # temp dir of a local cluster (None: external)
        self.as_user = as_user
        self._template_ready = False
        self.template = TEMPLATE_DB
        self._stopped = False
        self._rolling: list[str] = []
        self.start_options: str | None = None  # pg_ctl -o of a local cluster (for resume)

    # -- databases -------------------------------------------------------------
    def url(self, dbname: str) -> str:
        return _with_db(self.admin_url, dbname)

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql)

    def _ensure_template(self) -> None:
        if self._template_ready:
            return
        from conveyor.backends.postgres import upgrade

        name = TEMPLATE_DB if self.base is not None else f"{TEMPLATE_DB}_{uuid.uuid4().hex[:8]}"
        self._admin(f'DROP DATABASE IF EXISTS "{name}"')
        self._admin(f'CREATE DATABASE "{name}"')
        upgrade(self.url(name))
        self.template = name
        self._template_ready = True

    def create_database(self, *, migrated: bool = True) -> str:
        """A new database (copied from the migrated template, or empty); returns its URL."""
        with _lock:
            name = f"t_{uuid.uuid4().hex[:16]}"
            if migrated:
                self._ensure_template()
                self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
            else:
                self._admin(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        with contextlib.suppress(Exception):
            self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def rolling_database(self) -> str:
        """An empty migrated database, reused from call to call.

        For factories that have no teardown hook (one store per test, and the
        previous test has closed its handles by the time the next starts):
        the previous call's database is emptied (TRUNCATE, ~20 ms; a new
        database from the template costs several times that), or replaced
        by a new one if that fails (e.g. a leaked transaction holds a lock).
        """
        import psycopg

        for url in self._rolling:
            try:
                with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
                    conn.execute("SET lock_timeout = '3s'")
                    conn.execute(TRUNCATE)
                return url
            except psycopg.Error:
                self.drop_database(url)
        self._rolling.clear()
        url = self.create_database()
        self._rolling.append(url)
        return url

    # -- lifecycle -------------------------------------------------------------
    def _run(self, args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        assert self.bindir is not None
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.as_user:
            cmd = ["runuser", "-u", self.as_user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=self.base, **kwargs)  # type: ignore[call-overload, no-any-return]

    # -- faults (a local cluster only: chaos and outage tests) ------------------------
    @property
    def data_dir(self) -> Path:
        if self.base is None:
            raise RuntimeError("an external PostgreSQL cannot be restarted by the tests")
        return self.base / "data"

    def _ctl(self, *args: str, timeout: float = 90) -> None:
        res = self._run(
            ["pg_ctl", *args, "-D", str(self.data_dir), "-w", "-t", "60"], timeout=timeout
        )
        if res.returncode != 0:
            log = (self.data_dir.parent / "server.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"pg_ctl {args[0]} failed:\n{res.stdout}\n{res.stderr}\n{log}")

    def restart(self, mode: str = "fast") -> None:
        """``pg_ctl restart -m MODE``: open connections are cut; the server is back on return."""
        self._ctl("restart", "-m", mode, "-l", str(self.data_dir.parent / "server.log"))

    def halt(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m MODE``, keeping the data: the server is down until :meth:`resume`."""
        self._ctl("stop", "-m", mode)

    def resume(self) -> None:
        """Start a halted cluster again, on the same port."""
        args = ["start", "-l", str(self.data_dir.parent / "server.log")]
        if self.start_options:
            args += ["-o", self.start_options]
        self._ctl(*args)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.base is None:  # external server: drop what we made
            for url in self._rolling:
                self.drop_database(url)
            if self._template_ready:
                self.drop_database(self.url(self.template))
            return
        data = self.base / "data"
        pid = _postmaster_pid(data)
        with contextlib.suppress(Exception):
            self._run(["pg_ctl", "stop", "-D", str(data), "-m", "immediate", "-w", "-t", "20"])
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, 0)
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.base, ignore_errors=True)


def _postmaster_pid(data: Path) -> int | None:
    try:
        return int((data / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


def start_cluster(*, durable: bool = False) -> PgCluster:
    """initdb + pg_ctl start a fresh cluster; raise RuntimeError if that fails.

    By default durability is off (fsync, synchronous_commit, full-page
    writes): tests want speed.  ``durable=True`` keeps fsync and full-page
    writes and only turns synchronous_commit off, the counterpart of SQLite's
    WAL + synchronous=NORMAL, for benchmarks.
    """
    bindir = find_pg_bin()
    if bindir is None:
        raise FileNotFoundError(
            "PostgreSQL server binaries (initdb, pg_ctl) not found "
            "(apt-get install postgresql, or set CONVEYOR_TEST_PG_URL)"
        )
    as_user = None
    if os.geteuid() == 0:
        as_user = RUN_AS
        try:
            import pwd

            pw = pwd.getpwnam(RUN_AS)
        except KeyError:
            raise RuntimeError(
                f"running as root and there is no {RUN_AS!r} user to run initdb as"
            ) from None
    base = Path(tempfile.mkdtemp(prefix="conveyor-pg-"))
    if as_user:
        os.chown(base, pw.pw_uid, pw.pw_gid)
    cluster = PgCluster("", bindir=bindir, base=base, as_user=as_user)
    data, sock, log = base / "data", base, base / "server.log"
    res = cluster._run(
        ["initdb", "-D", str(data), "-U", USER, "-A", "trust", "-E", "UTF8", "--locale=C", "-N"],
        timeout=120,
    )
    if res.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"initdb failed:\n{res.stdout}\n{res.stderr}")
    with open(data / "postgresql.conf", "a") as conf:
        conf.write(
            "\n# conveyor tests\n"
            + (
                "synchronous_commit = off\n"
                if durable
                else "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
            )
            + "max_connections = 300\nshared_buffers = 64MB\n"
            "dynamic_shared_memory_type = mmap\nmax_parallel_workers_per_gather = 0\n"
            "log_min_messages = warning\n"
        )
    last_error = ""
    for _attempt in range(5):  # the free port may be taken between probe and bind
        port = _free_port()
        opts = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={sock}"
        res = cluster._run(
            ["pg_ctl", "start", "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", opts],
            timeout=90,
        )
        if res.returncode == 0:
            cluster.admin_url = f"postgresql://{USER}@127.0.0.1:{port}/postgres"
            cluster.start_options = opts
            atexit.register(cluster.stop)
            return cluster
        last_error = f"{res.stdout}\n{res.stderr}\n{log.read_text(errors='replace')[-3000:]}"
    cluster.stop()
    raise RuntimeError(f"pg_ctl start failed:\n{last_error}")


def get_cluster() -> PgCluster:
    """The process-wide cluster, started on first use (raises if it cannot be)."""
    global _cluster, _unavailable
    with _lock:
        if _cluster is not None:
            return _cluster
        if _unavailable is not None:
            raise RuntimeError(_unavailable)
        external = os.environ.get(EXTERNAL_URL_ENV)
        try:
            if external:
                _cluster = PgCluster(external)
                atexit.register(_cluster.stop)
            else:
                _cluster = start_cluster()
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            _unavailable = f"PostgreSQL test cluster unavailable: {exc}"
            raise RuntimeError(_unavailable) from exc
        return _cluster


def require_cluster() -> PgCluster:
    """``get_cluster()``, or skip the test (fail it under CI=true)."""
    try:
        return get_cluster()
    except RuntimeError as exc:
        if IN_CI:
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def stop_cluster() -> None:
    global _cluster
    with _lock:
        if _cluster is not None:
            _cluster.stop()
            _cluster = None


@contextlib.contextmanager
def fresh_database(*, migrated: bool = True) -> Iterator[str]:
    """URL of a new database (skips/fails as ``require_cluster``), dropped afterwards."""
    cluster = require_cluster()
    url = cluster.create_database(migrated=migrated)
    try:
        yield url
    finally:
        cluster.drop_database(url)


# -- fixtures ----------------------------------------------------------------------
@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    yield require_cluster()
    stop_cluster()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh database holding the current schema, dropped afterwards."""
    with fresh_database() as url:
        yield url


@pytest.fixture
def pg_empty_url() -> Iterator[str]:
    """A fresh database with no Conveyor schema at all, dropped afterwards."""
    with fresh_database(migrated=False) as url:
        yield url
