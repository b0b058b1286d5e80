"""A one-node Slurm cluster on this machine, from Debian's packages, for the tests and the bench.

``make test-deps`` installs ``munge``, ``slurm-wlm`` (``slurmctld``, ``slurmd``, the
client commands) and ``slurmrestd``.  :class:`SlurmCluster` then starts, in a temporary
folder and as root (``slurmd`` must be root to start jobs as their users):

* ``munged`` with a MUNGE key made for this cluster (1 KiB from ``os.urandom``, mode
  0400) on a socket of its own (``{run}``: a folder of its own under /tmp, mode 0711,
  as munged wants every folder above its socket searchable);
* ``slurmctld -D`` and ``slurmd -D -N node1`` with the generated ``slurm.conf``
  below: no cgroups (``proctrack/linuxproc``, ``task/none``), no accounting, both daemons
  on 127.0.0.1 on ports chosen free, state and spool folders in the temporary folder;
* ``slurmrestd`` on a UNIX socket with ``rest_auth/local`` (Debian's Slurm is built
  without ``auth/jwt``, so its JWT path cannot be run here; see docs/slurm.md).

Every daemon is stopped by its PID (the jobs first, with ``scancel``).  The tests that
use it fail when ``CI=true`` and it cannot start, and skip elsewhere.

The configuration, a reference for operators, is :data:`CONF` below (written once:
what the cluster runs is what this documents; ``{…}`` are filled in at start).

``CPUs`` is at least 4 whatever the machine has (``config_overrides``: slurmd takes the
configured count), so that three jobs can run at once on a 2-core test machine; their
work is mostly waiting.  ``gpunode`` never starts (``DOWN``): it gives the cluster
page a GPU partition to show (its slurmd port is one nothing listens on).  A real site
has cgroups (``proctrack/cgroup``, ``task/cgroup``: memory limits and
``OUT_OF_MEMORY``), accounting (``slurmdbd``), its own ``SlurmUser`` and its MUNGE key
on every node.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel")

# the generated slurm.conf: every daemon and client of the test cluster reads this file
CONF = """\
ClusterName=conveyortest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={run}/munge.sock
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={run}/slurmctld.pid
SlurmdPidFile={run}/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
KillWait=5
MinJobAge=300
InactiveLimit=0
GresTypes=gpu
NodeName=node1 NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
NodeName=gpunode NodeAddr=127.0.0.2 Port={dead_port} CPUs=8 Gres=gpu:2 State=DOWN Reason=off
PartitionName=debug Nodes=node1 Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=gpunode MaxTime=INFINITE State=UP
"""
# the docstring shows it as it is, not a copy that could drift from it
__doc__ = f"{__doc__}\nThe generated ``slurm.conf``::\n\n{textwrap.indent(CONF, '    ')}"


class SlurmUnavailable(RuntimeError):
    pass


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def missing_tools() -> list[str]:
    return [t for t in (*DAEMONS, "slurmrestd") if shutil.which(t) is None]


class SlurmCluster:
    def __init__(self, root: Path, *, cpus: int | None = None, rest: bool = True) -> None:
        self.root = root
        self.cpus = cpus or max(4, os.cpu_count() or 1)
        self.rest = rest
        self.conf = root / "slurm.conf"
        # munged wants every folder above its socket searchable: a folder of its own
        self.run_dir = Path(tempfile.mkdtemp(prefix="conveyor-slurm-"))
        os.chmod(self.run_dir, 0o711)
        self.rest_socket = self.run_dir / "slurmrestd.sock"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.munged_pid: int | None = None

    # -- the environment a Slurm client needs ------------------------------------------
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    @property
    def rest_url(self) -> str:
        return f"http+unix://{self.rest_socket}"

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv),
            env={**os.environ, **self.env()},
            capture_output=True,
            text=True,
            timeout=60,
            check=check,
        )

    def log(self, name: str) -> str:
        path = self.root / "log" / name
        return path.read_text(errors="replace") if path.exists() else ""

    # -- start and stop ----------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> None:
        missing = missing_tools()
        if missing:
            raise SlurmUnavailable(f"not installed: {', '.join(missing)} (make test-deps)")
        if os.geteuid() != 0:
            raise SlurmUnavailable("slurmd must run as root to start jobs")
        for sub in ("state", "spool", "log", "munge"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        memory_mb = 8192
        self.conf.write_text(
            CONF.format(
                root=self.root,
                run=self.run_dir,
                ctld_port=_free_port(),
                slurmd_port=_free_port(),
                dead_port=_free_port(),  # nothing answers there: gpunode stays down
                cpus=self.cpus,
                memory_mb=memory_mb,
            )
        )
        try:
            self._start_munged(key)
            self._start("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
            self._until(lambda: self.run("scontrol", "ping", check=False).returncode == 0, timeout)
            self._start("slurmd", ["slurmd", "-D", "-N", "node1", "-f", str(self.conf)])
            self._until(self._node_idle, timeout)
            if self.rest:
                self._start(
                    "slurmrestd",
                    [
                        "slurmrestd",
                        "-a",
                        "rest_auth/local",
                        "-s",
                        "openapi/v0.0.38",
                        "-f",
                        str(self.conf),
                        f"unix:{self.rest_socket}",
                    ],
                    extra_env={"SLURMRESTD_SECURITY": "disable_user_check"},
                )
                self._until(self.rest_socket.exists, 20)
        except BaseException:
            self.stop()
            raise

    def _start_munged(self, key: Path) -> None:
        run = self.run_dir
        subprocess.run(
            [
                "munged",
                f"--key-file={key}",
                f"--socket={run / 'munge.sock'}",
                f"--pid-file={run / 'munged.pid'}",
                f"--log-file={self.root / 'log' / 'munged.log'}",
                f"--seed-file={self.root / 'munge' / 'seed'}",
            ],
            check=False,
            capture_output=True,
            timeout=30,
        )
        self._until(lambda: (run / "munged.pid").exists() and (run / "munge.sock").exists(), 10)
        self.munged_pid = int((run / "munged.pid").read_text().strip())

    def _start(self, name: str, argv: list[str], extra_env: dict[str, str] | None = None) -> None:
        out = open(self.root / "log" / f"{name}.out", "ab")  # noqa: SIM115 - the child's
        self.procs[name] = subprocess.Popen(
            argv,
            env={**os.environ, **self.env(), **(extra_env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _until(self, check: object, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise SlurmUnavailable(
                        f"{name} exited ({proc.returncode}):\n{self.log(name + '.out')}"
                        f"\n{self.log(name + '.log')}"
                    )
            try:
                if check():  # type: ignore[operator]
                    return
            except (OSError, subprocess.SubprocessError):
                pass
            time.sleep(0.2)
        raise SlurmUnavailable(
            f"Slurm did not come up in {timeout:g} s:\n{self.log('slurmctld.log')[-3000:]}"
            f"\n{self.log('slurmd-node1.log')[-3000:]}"
        )

    def _node_idle(self) -> bool:
        out = self.run("sinfo", "-h", "-n", "node1", "-o", "%t", check=False).stdout
        return out.strip() in ("idle", "mix", "alloc")

    def cancel_all(self, timeout: float = 30.0) -> None:
        """scancel every job and wait until none runs (their slurmstepd processes end)."""
        self.run("scancel", "--user", "root", check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.run("squeue", "-h", "-t", "PD,R,CG,CF", "-o", "%i", check=False).stdout
            if not out.strip():
                return
            time.sleep(0.3)

    def stop(self) -> None:
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                self.cancel_all()
        for name in ("slurmrestd", "slurmd", "slurmctld"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self.munged_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.munged_pid, signal.SIGTERM)
            self.munged_pid = None
        shutil.rmtree(self.run_dir, ignore_errors=True)


if __name__ == "__main__":  # start one by hand: python -m tests.slurm_cluster /tmp/slurm
    import sys

    cluster = SlurmCluster(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/conveyor-slurm"))
    cluster.start()
    print(f"export SLURM_CONF={cluster.conf}   # slurmrestd: {cluster.rest_url}")
    try:
        signal.pause()
    finally:
        cluster.stop()
