"""A throwaway Docker engine and a test image built without a registry.

Debian's ``dockerd`` on a private unix socket, with its own data root, exec
root and containerd namespace so it shares nothing with another engine on the
machine; no bridge, no iptables (containers run with ``network_mode=none``).
Started once per test process, lazily, and stopped by PID at exit.

The image is ``docker import`` (through the SDK) of a tar holding Debian's
static busybox with a link for each applet: a real image with ``sh``,
``sleep`` and friends, built offline in about a second.

When ``dockerd`` is missing the tests fail under CI=true and skip elsewhere.
``CONVEYOR_TEST_DOCKER_HOST`` points the tests at an existing engine instead.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
EXTERNAL_ENV = "CONVEYOR_TEST_DOCKER_HOST"
IMAGE = "conveyor-test/busybox:1"

_lock = threading.Lock()
_engine: DockerEngine | None = None
_unavailable: str | None = None


@dataclass
class DockerEngine:
    host: str  # unix:///…/docker.sock
    image: str
    root: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    def client(self):  # type: ignore[no-untyped-def]
        import docker

        return docker.DockerClient(base_url=self.host, timeout=60)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.root is not None:
            # containerd leaves mounts under the data root until it exits
            with contextlib.suppress(Exception):
                subprocess.run(["umount", "-R", "-l", str(self.root)], capture_output=True)
            shutil.rmtree(self.root, ignore_errors=True)


def _busybox_tar() -> bytes:
    src = shutil.which("busybox") or "/bin/busybox"
    applets = subprocess.run([src, "--list"], capture_output=True, text=True, check=True).stdout
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "tmp", "conveyor", "conveyor/inputs", "conveyor/outputs"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        tar.add(src, arcname="bin/busybox")
        for name in applets.split():
            if name == "busybox":
                continue
            link = tarfile.TarInfo(f"bin/{name}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
    return buf.getvalue()


def build_image(engine: DockerEngine) -> None:
    client = engine.client()
    try:
        with contextlib.suppress(Exception):
            client.images.get(engine.image)
            return
        repo, tag = engine.image.rsplit(":", 1)
        client.api.import_image_from_data(
            _busybox_tar(),
            repository=repo,
            tag=tag,
            changes=["ENV PATH=/bin", 'CMD ["/bin/sh"]'],
        )
        client.images.get(engine.image)
    finally:
        client.close()


def _start() -> DockerEngine:
    external = os.environ.get(EXTERNAL_ENV)
    if external:
        engine = DockerEngine(host=external, image=IMAGE)
        build_image(engine)
        return engine
    dockerd = shutil.which("dockerd")
    if dockerd is None or shutil.which("busybox") is None:
        raise RuntimeError("dockerd and busybox are not installed (apt: docker.io busybox-static)")
    if os.geteuid() != 0:
        raise RuntimeError("dockerd needs root")
    root = Path(tempfile.mkdtemp(prefix="conveyor-container-docker-", dir="/tmp"))
    sock = root / "d.sock"
    log = open(root / "dockerd.log", "wb")  # noqa: SIM115 - owned by the child
    ns = f"conveyor-test-{os.getpid()}"
    proc = subprocess.Popen(
        [
            dockerd,
            "--data-root",
            str(root / "data"),
            "--exec-root",
            str(root / "exec"),
            "--pidfile",
            str(root / "dockerd.pid"),
            "-H",
            f"unix://{sock}",
            "--containerd-namespace",
            ns,
            "--containerd-plugins-namespace",
            f"{ns}-plugins",
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-forward=false",
            "--ip-masq=false",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    engine = DockerEngine(host=f"unix://{sock}", image=IMAGE, root=root, proc=proc)
    atexit.register(engine.stop)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"dockerd exited: {(root / 'dockerd.log').read_text(errors='replace')[-3000:]}"
            )
        if sock.exists():
            try:
                c = engine.client()
                c.ping()
                c.close()
                break
            except Exception:
                pass
        if time.monotonic() > deadline:
            engine.stop()
            raise RuntimeError("dockerd did not answer within 60 s")
        time.sleep(0.2)
    build_image(engine)
    return engine


def require_engine() -> DockerEngine:
    """The shared engine; fails under CI=true and skips elsewhere when it cannot start."""
    global _engine, _unavailable
    with _lock:
        if _engine is None and _unavailable is None:
            try:
                _engine = _start()
            except Exception as exc:
                _unavailable = str(exc)
    if _engine is None:
        msg = f"no Docker engine: {_unavailable}"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return _engine


@pytest.fixture(scope="session")
def docker_engine() -> DockerEngine:
    return require_engine()
