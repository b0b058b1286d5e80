"""A real one-node Slurm cluster (tests/slurm_cluster.py), a real API with auth on, and
``conveyor worker --executor slurm`` processes on the "login node" (this machine).

The cluster starts once per session; each test gets its own API (``conveyor serve``,
auth on, short leases) and starts its executors with :meth:`Site.executor`, enrolled
with a one-time token as a site would.  When Slurm cannot start, the tests fail in CI
(``CI=true``) and skip elsewhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import FAST_ENV, IN_CI, start_process
from tests.security.auth_server import AuthServer, auth_server
from tests.slurm_cluster import SlurmCluster, SlurmUnavailable

LOCAL_RUNNER = {
    # the compute node runs container-kind commands with the local runner: Slurm is the
    # sandbox there (docs/slurm.md); auth is on, so the operator's explicit opt-in
    "CONVEYOR_CONTAINER_RUNNER": "local",
    "CONVEYOR_CONTAINER_LOCAL_UNSANDBOXED": "i-understand-submitters-run-commands-on-this-host",
}
EXECUTOR_ENV = {**FAST_ENV, **LOCAL_RUNNER, "CONVEYOR_ENCODER": "cpu"}
FINAL = ("completed", "failed", "cancelled")


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except SlurmUnavailable as exc:
        if IN_CI:
            pytest.fail(f"the Slurm test cluster cannot start: {exc}")
        pytest.skip(f"the Slurm test cluster cannot start: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()


@dataclass
class Site:
    """An API, the cluster, and the executors a test started (killed at its end)."""

    api: AuthServer
    slurm: SlurmCluster
    root: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    enrolled: set[str] = field(default_factory=set)

    @property
    def admin(self) -> httpx.Client:
        return self.api.client(self.api.admin)

    def executor(
        self, name: str = "slurm-exec", *args: str, env: dict[str, str] | None = None
    ) -> tuple[subprocess.Popen[bytes], Path]:
        """``conveyor worker --executor slurm`` joined to the API (enrolled the first time)."""
        data = self.root / f"login-{name}"
        data.mkdir(exist_ok=True)
        out = self.root / "job-output"
        out.mkdir(exist_ok=True)
        cred = data / "worker.json"
        argv = ["worker", "--executor", "slurm", "--join", self.api.url]
        argv += ["--credential-file", str(cred), "--data-dir", str(data)]
        argv += ["--partition", "debug", "--output-dir", str(out), *args]
        if name not in self.enrolled:
            with self.admin as c:
                r = c.post("/api/workers/enrollment-tokens", json={"name": name})
            assert r.status_code == 201, r.text
            argv += ["--enroll", r.json()["token"], "--name", name]
            self.enrolled.add(name)
        log = self.root / f"executor-{name}-{len(self.procs)}.log"
        full_env = {**EXECUTOR_ENV, **self.slurm.env(), **(env or {})}
        proc = start_process(argv, data, log, full_env)
        self.procs.append(proc)
        return proc, log

    def submit(self, body: dict[str, Any]) -> str:
        with self.admin as c:
            r = c.post("/api/queue/add", json=body)
        assert r.status_code == 201, r.text
        return str(r.json()["task_id"])

    def container(self, command: list[str], **params: Any) -> str:
        return self.submit({"kind": "container", "params": {"command": command, **params}})

    def task(self, task_id: str) -> dict[str, Any]:
        with self.admin as c:
            t: dict[str, Any] = c.get(f"/api/tasks/{task_id}").json()
        return t

    def logs(self, task_id: str) -> list[dict[str, Any]]:
        with self.admin as c:
            body = c.get(f"/api/tasks/{task_id}/logs", params={"limit": 1000}).json()
        return list(body["lines"] if isinstance(body, dict) else body)

    def wait(
        self, task_id: str, statuses: tuple[str, ...] = FINAL, timeout: float = 120
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            t = self.task(task_id)
            if t["status"] in statuses:
                return t
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"task {task_id} not {statuses} after {timeout:g} s: {json.dumps(t)[:2000]}"
                    f"\n{self.executor_logs()}"
                )
            time.sleep(0.2)

    def jobs(self, states: str = "PD,R,CG,CF") -> list[dict[str, str]]:
        """Conveyor's jobs Slurm has in these states (squeue)."""
        out = self.slurm.run(
            "squeue", "-h", "-t", states, "-o", "%i|%j|%T|%r|%k", check=False
        ).stdout
        rows = []
        for line in out.splitlines():
            jid, name, state, reason, comment = line.split("|", 4)
            if name.startswith("cvy-"):
                rows.append(
                    {"id": jid, "name": name, "state": state, "reason": reason, "comment": comment}
                )
        return rows

    def job_of(self, task_id: str, timeout: float = 60, state: str = "R") -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for job in self.jobs(state):
                if task_id in job["name"]:
                    return job
            time.sleep(0.2)
        raise AssertionError(f"no {state} job for {task_id}:\n{self.executor_logs()}")

    def executor_logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
            for p in sorted(self.root.glob("executor-*.log"))
        )

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        self.slurm.cancel_all()


@pytest.fixture
def site(slurm: SlurmCluster, tmp_path: Path) -> Iterator[Site]:
    (tmp_path / "api").mkdir()
    # the API's host is a Slurm client too (the console's cluster page reads Slurm)
    with auth_server(tmp_path / "api", env=slurm.env()) as api:
        s = Site(api=api, slurm=slurm, root=tmp_path)
        try:
            yield s
        finally:
            s.stop()


def conveyor_env(site: Site) -> dict[str, str]:
    return {**os.environ, "CONVEYOR_URL": site.api.url, "CONVEYOR_TOKEN": site.api.admin}
