"""What the Slurm executor costs over plain sbatch (issue 20, show-point 4).

On the one-node test cluster (tests/slurm_cluster.py: Debian's slurmctld, slurmd and
munge, started here as root; ``make test-deps`` installs them):

* **direct**: N ``sbatch --wrap "sleep S"`` jobs submitted one after another, as a user
  would; wall time from the first submit until Slurm says the last one ended;
* **executor**: N container-kind tasks (``sleep S``, the local runner on the node)
  submitted to a real ``conveyor serve`` (auth on), run by ``conveyor worker --executor
  slurm`` (enrolled, ``--concurrency N``: it may have all N jobs in Slurm at once, as the
  direct run has); wall time from the first submit until the last task is completed.

Both on the same partition with the same slots; it prints both wall times and the ratio
(goal ≤ 1.2).  Each executor job starts Python, reads its task from the API with its
task credential, runs the command with the same processor as any worker, ships its log
and completes: that is the overhead measured.

    .venv/bin/python bench/slurm_overhead.py [--tasks 200] [--seconds 1] [--slots CPUS] [--repeat K]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import start_process
from tests.security.auth_server import auth_server
from tests.slurm_cluster import SlurmCluster

# how often each run asks whether its work is done (squeue; the API's queue counts): the
# same for both, and light, since the asking shares the 2 cores with what is measured (at
# 4-5 a second it cost the API more CPU than the executor's own calls); it rounds each
# wall time up by at most this much
POLL_S = 0.5

LOCAL_RUNNER = {
    "CONVEYOR_CONTAINER_RUNNER": "local",
    "CONVEYOR_CONTAINER_LOCAL_UNSANDBOXED": "i-understand-submitters-run-commands-on-this-host",
}


def cpu_s(pid: int) -> float:
    """CPU seconds a process used so far (user + system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def active(cluster: SlurmCluster, prefix: str) -> int:
    out = cluster.run("squeue", "-h", "-t", "PD,R,CG,CF", "-o", "%j", check=False).stdout
    return sum(1 for name in out.split() if name.startswith(prefix))


def load() -> str:
    """The machine's load (1, 5, 15 min): the benchmark shares 2 cores with other work."""
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def job_times(cluster: SlurmCluster, names: set[str]) -> str:
    """How long Slurm says the jobs ran (start to end), and how long a freed slot waited
    for the next job: what the executor adds shows in the first, Slurm's own cost in the
    second (squeue keeps ended jobs for MinJobAge, 300 s)."""
    out = cluster.run("squeue", "-h", "-t", "all", "-o", "%j|%S|%e", check=False).stdout
    spans = []
    for line in out.splitlines():
        name, start, end = line.split("|")
        if name in names:
            with contextlib.suppress(ValueError):
                spans.append((datetime.fromisoformat(start), datetime.fromisoformat(end)))
    if not spans:
        return "no job times (squeue forgot them)"
    runs = [(e - s).total_seconds() for s, e in spans]
    starts = sorted(s for s, _ in spans)
    ends = sorted(e for _, e in spans)
    # the k-th job after the first slots' worth starts when the k-th job before it ended
    slots = max(1, sum(1 for s in starts if s == starts[0]))
    waits = [(starts[i + slots] - ends[i]).total_seconds() for i in range(len(spans) - slots)]
    return (
        f"Slurm's view: job run time median {statistics.median(runs):.1f} s "
        f"(max {max(runs):.0f} s, 1 s resolution); a freed slot's next job started after "
        f"median {statistics.median(waits) if waits else 0:.1f} s"
    )


def direct(cluster: SlurmCluster, n: int, seconds: float, out: Path, run: int) -> float:
    prefix = f"direct{run}-"
    start = time.monotonic()
    for i in range(n):
        cluster.run(
            "sbatch",
            "--parsable",
            f"--job-name={prefix}{i}",
            "--partition=debug",
            "--ntasks=1",
            "--cpus-per-task=1",
            "--no-requeue",
            f"--output={out}/{prefix}{i}.out",
            f"--chdir={out}",
            f"--wrap=sleep {seconds:g}",
        )
    submitted = time.monotonic() - start
    while active(cluster, prefix):
        time.sleep(POLL_S)
    wall = time.monotonic() - start
    print(
        f"direct:   {n} sbatch jobs in {wall:.1f} s (submitting took {submitted:.1f} s; {load()})"
    )
    print(f"          {job_times(cluster, {f'{prefix}{i}' for i in range(n)})}")
    return wall


def executor(cluster: SlurmCluster, n: int, seconds: float, root: Path) -> float:
    (root / "api").mkdir(parents=True)
    env = {**cluster.env(), "CONVEYOR_LEASE_SECONDS": "30", "CONVEYOR_REAP_INTERVAL": "5"}
    with auth_server(root / "api", env=env) as api:
        with api.client(api.admin) as c:
            r = c.post("/api/workers/enrollment-tokens", json={"name": "bench-exec"})
            token = r.json()["token"]
        data = root / "login"
        data.mkdir()
        out = root / "job-output"
        out.mkdir()
        argv = ["worker", "--executor", "slurm", "--join", api.url, "--enroll", token]
        argv += ["--name", "bench-exec", "--credential-file", str(data / "worker.json")]
        argv += ["--data-dir", str(data), "--partition", "debug", "--output-dir", str(out)]
        argv += ["--concurrency", str(min(n, 256))]
        proc = start_process(argv, data, root / "executor.log", {**env, **LOCAL_RUNNER})
        try:
            time.sleep(3)  # started and enrolled: its start is not what is measured
            assert proc.poll() is None, (root / "executor.log").read_text()
            with api.client(api.admin) as c:
                start = time.monotonic()
                ids = []
                for _ in range(n):
                    body = {"kind": "container", "params": {"command": ["sleep", f"{seconds:g}"]}}
                    r = c.post("/api/queue/add", json=body)
                    assert r.status_code == 201, r.text
                    ids.append(r.json()["task_id"])
                submitted = time.monotonic() - start
                while True:  # one cheap read a poll: the counts
                    q = c.get("/api/queue/status").json()
                    assert q["failed_today"] == 0, c.get("/api/tasks?status=failed").text
                    if q["completed_today"] >= n:
                        break
                    time.sleep(POLL_S)
                wall = time.monotonic() - start
                used = {"executor": cpu_s(proc.pid), "API": cpu_s(api.srv.proc.pid)}
                runs = []
                for task_id in ids[:: max(1, n // 20)]:
                    t = c.get(f"/api/tasks/{task_id}").json()
                    a = t["history"][-1]
                    took = datetime.fromisoformat(a["finished_at"]) - datetime.fromisoformat(
                        a["started_at"]
                    )
                    runs.append(took.total_seconds())
        finally:
            proc.terminate()
            proc.wait(30)
    print(
        f"executor: {n} tasks in {wall:.1f} s (submitting took {submitted:.1f} s; "
        f"claim to completion per task, median {statistics.median(runs):.1f} s; CPU used: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in used.items())
        + f"; {load()})"
    )
    print(f"          {job_times(cluster, {f'cvy-{task_id}-1' for task_id in ids})}")
    return wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument(
        "--slots",
        type=int,
        default=os.cpu_count() or 1,
        help="the node's CPUs in slurm.conf (this machine's cores: one real CPU a job, "
        "as on a cluster; the tests' fixture gives it at least 4)",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="pairs of runs, in the order direct, executor, executor, direct, ... (the "
        "machine's other load drifts; the totals are compared)",
    )
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root: the test cluster's slurmd starts jobs as their users")
        return 2
    root = Path(tempfile.mkdtemp(prefix="conveyor-slurm-bench-"))
    cluster = SlurmCluster(root / "slurm", rest=False, cpus=args.slots)
    cluster.start()
    try:
        cpus = cluster.run("sinfo", "-h", "-p", "debug", "-o", "%C", check=False).stdout.strip()
        print(
            f"one-node cluster, partition debug (CPUs allocated/idle/other/total {cpus}), "
            f"{args.tasks} tasks of `sleep {args.seconds:g}`, one CPU each; "
            f"{os.cpu_count()} cores on this machine; {load()}"
        )
        out = root / "direct-output"
        out.mkdir()
        walls: dict[str, list[float]] = {"direct": [], "executor": []}
        for k in range(args.repeat):
            for which in ("direct", "executor") if k % 2 == 0 else ("executor", "direct"):
                if which == "direct":
                    walls[which].append(direct(cluster, args.tasks, args.seconds, out, k))
                else:
                    wall = executor(cluster, args.tasks, args.seconds, root / f"executor{k}")
                    walls[which].append(wall)
        d, e = sum(walls["direct"]), sum(walls["executor"])
        if args.repeat > 1:
            for which, ws in walls.items():
                print(f"{which}: " + " + ".join(f"{w:.1f}" for w in ws) + f" = {sum(ws):.1f} s")
        print(
            f"ratio executor/direct: {e / d:.2f} (goal <= 1.2; {args.slots} slots, "
            f"{args.tasks} tasks x {args.repeat}; {load()})"
        )
    finally:
        cluster.stop()
        subprocess.run(["rm", "-rf", str(root)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
