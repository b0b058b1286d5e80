"""Issue 13's container findings, each against a real ``conveyor up --auth``.

Findings 1, 2, 3, 7 and the image-name part of 8: what a caller who may run
container tasks could do to the worker's host before, and cannot now.  The
servers are real subprocesses with auth on (the first admin token read from
their output); the Docker ones use the private engine of the container tests
(tests/dockerd.py) and its busybox image.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import secrets
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import dockerd
from tests.conftest import FAST_ENV, Server, free_port, launch, start_process

docker_engine = dockerd.docker_engine

TOKEN_RE = re.compile(r"\b(cvy_[0-9a-f]+_[A-Za-z0-9_-]{43})\b")
RISK_FLAG = "CONVEYOR_CONTAINER_LOCAL_UNSANDBOXED"
RISK_VALUE = "i-understand-submitters-run-commands-on-this-host"
# a secret-looking variable in the worker's own environment: no job may see it
CANARY = f"canary-{secrets.token_hex(12)}"


def admin_token(srv: Server) -> str:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        m = TOKEN_RE.search(srv.log_text())
        if m:
            return m.group(1)
        time.sleep(0.1)
    raise AssertionError(f"no admin token in the server's output:\n{srv.log_text()}")


def client(srv: Server, token: str) -> httpx.Client:
    return httpx.Client(base_url=srv.url, timeout=30, headers={"Authorization": f"Bearer {token}"})


def add(c: httpx.Client, **params: Any) -> httpx.Response:
    top = {k: params.pop(k) for k in ("max_attempts",) if k in params}
    return c.post("/api/queue/add", json={"kind": "container", "params": params, **top})


def wait_task(c: httpx.Client, task_id: str, timeout: float = 120) -> dict[str, Any]:
    """The task once it has ended and, if completed, its outputs are visible (committed)."""
    deadline = time.monotonic() + timeout
    while True:
        t: dict[str, Any] = c.get(f"/api/tasks/{task_id}").json()
        ended = t["status"] in ("completed", "failed", "cancelled")
        if ended and not any(o.get("staged_key") for o in t["outputs"]):
            return t
        assert time.monotonic() < deadline, f"task {task_id} still {t['status']}: {t}"
        time.sleep(0.2)


def job_log(c: httpx.Client, task_id: str) -> list[str]:
    return [ln["line"] for ln in c.get(f"/api/tasks/{task_id}/logs?limit=10000").json()["lines"]]


def all_files(root: Path) -> Iterator[Path]:
    for dirpath, _dirs, files in os.walk(root, followlinks=False):
        for name in files:
            yield Path(dirpath) / name


def setuid_files(root: Path) -> list[str]:
    found = []
    for path in all_files(root):
        try:
            st = path.lstat()
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
            found.append(f"{path} mode {oct(st.st_mode)} uid {st.st_uid}")
    return found


# -- finding 1: a submitter runs commands on the worker host ---------------------------
@pytest.fixture(scope="module")
def default_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    """``conveyor up --auth`` as the docs start it: the default runner, no engine here."""
    env = {
        **FAST_ENV,
        "CONVEYOR_GPUS": "none",
        "DOCKER_HOST": "unix:///nonexistent/conveyor-test/docker.sock",
        "CONVEYOR_DOCKER_HOST": "",
    }
    env.pop("CONVEYOR_CONTAINER_RUNNER", None)
    srv = launch(tmp_path_factory.mktemp("default-up"), "up", env=env, extra=["--auth"])
    try:
        yield srv, admin_token(srv)
    finally:
        srv.stop()


def test_finding1_a_container_task_never_runs_on_the_host_of_a_default_worker(
    default_up: tuple[Server, str], tmp_path: Path
) -> None:
    srv, token = default_up
    marker = tmp_path / "ran-on-the-worker-host"
    c = client(srv, token)
    shell = f"id > {marker}; echo ran"
    no_image = add(c, command=["sh", "-c", shell], max_attempts=1)
    asked_local = add(c, image="busybox", command=["sh", "-c", shell], runner="local")
    with_image = add(c, image="busybox", command=["sh", "-c", shell])
    for r in (no_image, asked_local, with_image):
        assert r.status_code == 201, r.text
    time.sleep(3.0)  # many claim loops of the embedded worker
    assert not marker.exists(), (
        f"a submitter's command ran on the worker host: {marker.read_text()}"
    )
    # none is claimed (no engine here, and no fallback to the local runner): each says why
    for r in (no_image, asked_local, with_image):
        t = c.get(f"/api/tasks/{r.json()['task_id']}").json()
        assert (t["status"], t["attempts"]) == ("pending", 0), t
        why = t.get("waiting_reason") or ""
        assert "no container engine" in why and "local runner is off" in why, why


def _exits(proc: subprocess.Popen[bytes], log: Path, within: float) -> tuple[int | None, str]:
    try:
        code = proc.wait(within)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.wait(20)
        return None, log.read_text(errors="replace")
    return code, log.read_text(errors="replace")


def test_finding1_the_local_runner_under_auth_needs_the_operators_risk_flag(
    default_up: tuple[Server, str], tmp_path: Path
) -> None:
    srv, token = default_up
    local = {**FAST_ENV, "CONVEYOR_CONTAINER_RUNNER": "local", "CONVEYOR_GPUS": "none"}
    # 1. `conveyor up --auth` with the local runner and no flag refuses to start
    data = tmp_path / "up"
    data.mkdir()
    up_log = tmp_path / "up.log"
    port = str(free_port())
    proc = start_process(
        ["up", "--auth", "--port", port, "--data-dir", str(data)], data, up_log, local
    )
    code, out = _exits(proc, up_log, 30)
    assert code not in (None, 0), f"`up --auth` with the local runner started:\n{out[-3000:]}"
    assert RISK_FLAG in out, out[-3000:]
    # 2. a worker enrolled with the API (auth on there) refuses too
    r = client(srv, token).post("/api/workers/enrollment-tokens", json={"name": "local-w"})
    assert r.status_code == 201, r.text
    w_log = tmp_path / "worker.log"
    proc = start_process(
        [
            "worker",
            "--join",
            srv.url,
            "--enroll",
            r.json()["token"],
            "--name",
            "local-w",
            "--credential-file",
            str(tmp_path / "cred.json"),
        ],
        tmp_path / "w",
        w_log,
        local,
    )
    code, out = _exits(proc, w_log, 30)
    assert code not in (None, 0), f"an enrolled local-runner worker started:\n{out[-3000:]}"
    assert RISK_FLAG in out, out[-3000:]
    # 3. with the flag naming the risk, the operator's choice stands
    (tmp_path / "flagged").mkdir()
    ok = launch(tmp_path / "flagged", "up", env={**local, RISK_FLAG: RISK_VALUE}, extra=["--auth"])
    try:
        c = client(ok, admin_token(ok))
        deadline = time.monotonic() + 20
        while not any("container" in w["kinds"] for w in c.get("/api/workers").json()):
            assert time.monotonic() < deadline, c.get("/api/workers").json()
            time.sleep(0.2)
    finally:
        ok.stop()


# -- the Docker findings: one `conveyor up --auth` on the private engine ---------------
class LeakyRegistry(http.server.BaseHTTPRequestHandler):
    """A 'registry' on a loopback port whose answers carry a marker (finding 8)."""

    marker = f"LEAKED-{secrets.token_hex(6)}"

    def do_GET(self) -> None:
        body = json.dumps(
            {"errors": [{"code": "DENIED", "message": f"{self.marker} internal answer"}]}
        ).encode()
        self.send_response(403)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def registry() -> Iterator[int]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), LeakyRegistry)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield int(srv.server_address[1])
    finally:
        srv.shutdown()


@pytest.fixture(scope="module")
def docker_up(
    tmp_path_factory: pytest.TempPathFactory, docker_engine: dockerd.DockerEngine, registry: int
) -> Iterator[tuple[Server, str]]:
    env = {
        **FAST_ENV,
        "CONVEYOR_CONTAINER_RUNNER": "docker",
        "DOCKER_HOST": docker_engine.host,
        "CONVEYOR_CONTAINER_NETWORK": "none",
        "CONVEYOR_CONTAINER_SYNC_INTERVAL": "0.05",
        "CONVEYOR_GPUS": "none",
        "MAX_CONCURRENT_TASKS": "2",
        # the operator lets this one loopback registry through (finding 8's second part)
        "CONVEYOR_CONTAINER_LOCAL_REGISTRIES": f"127.0.0.1:{registry}",
        "AWS_SECRET_ACCESS_KEY": CANARY,
        "CONVEYOR_CANARY_TOKEN": CANARY,
    }
    srv = launch(tmp_path_factory.mktemp("docker-up"), "up", env=env, extra=["--auth"])
    try:
        yield srv, admin_token(srv)
    finally:
        srv.stop()


def bucket_objects(srv: Server) -> list[Path]:
    return list(all_files(srv.data_dir / "buckets"))


def test_finding2_a_symlink_swapping_job_gets_nothing_outside_its_folder(
    docker_up: tuple[Server, str], docker_engine: dockerd.DockerEngine
) -> None:
    srv, token = docker_up
    c = client(srv, token)
    # the host's own /etc files, by name: a job that makes files of those names and swaps
    # their folder for a link to /etc gets a host file wherever a copy follows the link
    host_files = {
        p.name: p.read_bytes()
        for p in sorted(Path("/etc").iterdir())
        if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", p.name)
        and p.is_file()
        and not p.is_symlink()
        and 0 < p.stat().st_size < 1_000_000
        and os.access(p, os.R_OK)
    }
    names = sorted(host_files)[:150]
    assert "passwd" in names, names
    # swap a folder of such files (old enough to look settled; 500 empty folders make
    # a listing slow) for links to /etc and to the data dir; a rename keeps the times
    script = (
        'cd "$CONVEYOR_OUTPUT_DIR"; mkdir real realdb; '
        "for f in $NAMES; do echo mine > real/$f; done; "
        "echo mine > realdb/conveyor.db; for i in $(seq 1000 1499); do mkdir real/zz$i; done; "
        'touch -d "2001-01-01 00:00:00" real/* realdb/*; '
        'end=$(( $(date +%s) + 2 )); while [ "$(date +%s)" -lt "$end" ]; do '
        "mv real d; mv realdb e; sleep 0.03; "
        'mv d real; mv e realdb; ln -s /etc d; ln -s "$DATA" e; sleep 0.03; rm d e; '
        "done; rm -rf d e real realdb; echo mine > result.txt; ln -s /etc/passwd link; "
        "mkdir e; ln -s /etc e/etc"
    )
    ids = []
    for _ in range(20):
        r = add(
            c,
            image=docker_engine.image,
            command=["sh", "-c", script],
            env={"DATA": str(srv.data_dir), "NAMES": " ".join(names)},
            max_attempts=1,
        )
        assert r.status_code == 201, r.text
        ids.append(r.json()["task_id"])
    done = [wait_task(c, i, timeout=180) for i in ids]
    assert [t["status"] for t in done] == ["completed"] * 20, [t.get("error") for t in done]
    # a finished task's staged copies are removed after its outcome (settle): scan
    # once they are gone, and read what the scan lists even if it vanished since
    staging = srv.data_dir / "buckets" / "output" / ".conveyor-staging"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(files for _, _, files in os.walk(staging)):
        time.sleep(0.5)
    leaked = []
    for path in bucket_objects(srv):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        for name, content in host_files.items():
            if data == content:
                leaked.append(f"{path} holds the host's /etc/{name}")
        if data.startswith(b"SQLite format 3"):
            leaked.append(f"{path} is a SQLite database")
    tasks = {p.split("/buckets/output/")[1].split("/")[0] for p in leaked if "/output/" in p}
    assert not leaked, f"{len(tasks)} of 20 tasks leaked host files:\n" + "\n".join(leaked)
    for t in done:
        for o in t["outputs"]:
            obj = srv.data_dir / "buckets" / o["bucket"] / o["key"]
            assert obj.read_bytes() == b"mine\n", (o["key"], obj.read_bytes()[:80])
        names = {o["name"] for o in t["outputs"]}
        assert names == {"result.txt"}, names  # the links were not followed
    print(f"\nFIGURE symlink swap: 20 tasks, {len(bucket_objects(srv))} objects, 0 host files")


def test_finding3_a_docker_job_runs_as_non_root_without_worker_env_or_host_paths(
    docker_up: tuple[Server, str], docker_engine: dockerd.DockerEngine
) -> None:
    srv, token = docker_up
    c = client(srv, token)
    script = (
        'echo "uid=$(id -u) gid=$(id -g)"; env | sort; '
        "grep -E '^(NoNewPrivs|CapEff|CapPrm|CapBnd):' /proc/self/status; "
        "cat /proc/self/mountinfo; cat /proc/1/environ | tr '\\0' '\\n'; "
        'env > "$CONVEYOR_OUTPUT_DIR/env.txt"; cat /proc/self/mountinfo > "$CONVEYOR_OUTPUT_DIR/m"'
    )
    r = add(c, image=docker_engine.image, command=["sh", "-c", script], env={"MINE": "yes"})
    assert r.status_code == 201, r.text
    t = wait_task(c, r.json()["task_id"], timeout=120)
    assert t["status"] == "completed", t
    lines = job_log(c, t["id"])
    text = "\n".join(lines)
    assert "MINE=yes" in lines
    uid_line = next(ln for ln in lines if ln.startswith("uid="))
    assert uid_line != "uid=0 gid=0" and not uid_line.startswith("uid=0 "), uid_line
    assert "NoNewPrivs:\t1" in lines, [ln for ln in lines if ln.startswith("NoNew")]
    assert "CapEff:\t0000000000000000" in lines, [ln for ln in lines if ln.startswith("Cap")]
    # the worker's own environment never reaches the job
    assert CANARY not in text
    for o in t["outputs"]:
        assert (
            CANARY.encode() not in (srv.data_dir / "buckets" / o["bucket"] / o["key"]).read_bytes()
        )
    # no folder of the worker's host is mounted into the job
    mounts = [ln for ln in lines if re.match(r"^\d+ \d+ \d+:\d+ ", ln)]
    assert mounts, text
    host = str(srv.data_dir)
    assert not [m for m in mounts if host in m or "/conveyor" in m.split()[4]], mounts


def test_finding1_a_docker_deployment_refuses_at_submit_what_only_the_host_could_run(
    docker_up: tuple[Server, str], docker_engine: dockerd.DockerEngine, tmp_path: Path
) -> None:
    srv, token = docker_up
    c = client(srv, token)
    marker = tmp_path / "ran-on-the-worker-host"
    for params in (
        {"command": ["sh", "-c", f"id > {marker}"]},
        {
            "image": docker_engine.image,
            "command": ["sh", "-c", f"id > {marker}"],
            "runner": "local",
        },
    ):
        r = add(c, **params)
        assert r.status_code == 400, r.text
        assert "local runner is off" in r.json()["error"]["message"], r.text
    assert not marker.exists()


def test_finding7_a_setuid_file_made_by_a_job_never_lands_on_the_host(
    docker_up: tuple[Server, str], docker_engine: dockerd.DockerEngine
) -> None:
    srv, token = docker_up
    c = client(srv, token)
    script = (
        'cp /bin/busybox "$CONVEYOR_OUTPUT_DIR/rootsh"; chmod 4755 "$CONVEYOR_OUTPUT_DIR/rootsh"; '
        'ls -ln "$CONVEYOR_OUTPUT_DIR/rootsh"; echo "as=$($CONVEYOR_OUTPUT_DIR/rootsh id -u)"; '
        "echo planted; sleep 3"
    )
    r = add(c, image=docker_engine.image, command=["sh", "-c", script])
    assert r.status_code == 201, r.text
    task_id = r.json()["task_id"]
    deadline = time.monotonic() + 60
    while "planted" not in job_log(c, task_id):
        assert time.monotonic() < deadline, job_log(c, task_id)
        time.sleep(0.1)
    seen: list[str] = []
    while c.get(f"/api/tasks/{task_id}").json()["status"] in ("pending", "processing"):
        seen += setuid_files(srv.data_dir)  # the worker's temp dir and the buckets
        time.sleep(0.1)
    t = wait_task(c, task_id)
    seen += setuid_files(srv.data_dir)
    assert not seen, "\n".join(sorted(set(seen)))
    assert t["status"] == "completed", t
    lines = job_log(c, task_id)
    ran_as = next(ln for ln in lines if ln.startswith("as="))
    assert ran_as != "as=0", "the job's setuid file made it root"
    assert [o["name"] for o in t["outputs"]] == ["rootsh"]


@pytest.mark.parametrize(
    "image",
    [
        "../../containers/json",
        "127.0.0.1:5000/x",
        "localhost:5000/x",
        "[::1]:5000/x",
        "169.254.169.254/latest",
        "a b",
        "busybox\n",
        "busybox@sha256:abc",
        "UPPER/case",
    ],
)
def test_finding8_bad_image_names_are_refused_at_submit(
    docker_up: tuple[Server, str], image: str
) -> None:
    srv, token = docker_up
    r = add(client(srv, token), image=image, command=["true"])
    assert r.status_code == 400, (image, r.status_code, r.text)
    assert r.json()["error"]["code"] == "invalid_params"


def test_finding8_a_registrys_answer_does_not_come_back_in_the_task_error(
    docker_up: tuple[Server, str], registry: int
) -> None:
    srv, token = docker_up
    c = client(srv, token)
    r = add(c, image=f"127.0.0.1:{registry}/probe:1", command=["true"], max_attempts=1)
    assert r.status_code == 201, r.text
    t = wait_task(c, r.json()["task_id"], timeout=120)
    assert t["status"] == "failed", t
    shown = json.dumps(t) + "\n".join(job_log(c, t["id"]))
    assert LeakyRegistry.marker not in shown, t["error"]
    assert f"127.0.0.1:{registry}/probe:1" in (t["error"] or "")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
