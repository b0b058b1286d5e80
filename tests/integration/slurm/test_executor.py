"""Issue 20's show-points 2 and 3 on a real one-node Slurm cluster, through
``conveyor worker --executor slurm`` (a separate process, enrolled with a one-time token,
talking to a real ``conveyor serve`` with auth on) and jobs that run one attempt each on
the node with a task-scoped credential.

* transcode and docparse complete on the node: outputs in the bucket, the job's lines
  in the task log; a container job's lines reach the log while it runs;
* a container command that exits 3 is retried, then failed with its exit code;
* a job over its time limit ends as TIMEOUT on the attempt;
* cancel in Conveyor leaves no job in squeue within 10 s, and the task is cancelled
  only once Slurm says the job ended;
* scancel from Slurm's side fails the attempt with that reason;
* a task asking for more CPUs than the partition has waits, with Slurm's reason shown
  by ``conveyor show``;
* the executor SIGKILLed with three jobs running: restarted, it adopts the three (no
  duplicate job in squeue) and each task completes once.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import make_clip
from tests.docparse_samples import make_sample_pdf
from tests.integration.slurm.conftest import Site, conveyor_env


def _put(site: Site, key: str, path: Path) -> None:
    with site.admin as c:
        r = c.put(f"/api/files/input/{key}", content=path.read_bytes())
    assert r.status_code < 300, r.text


def _lines(site: Site, task_id: str) -> list[str]:
    return [f"[{ln['stream']}] {ln['line']}" for ln in site.logs(task_id)]


def test_transcode_and_docparse_complete_on_the_node(site: Site, tmp_path: Path) -> None:
    _put(site, "clip.mp4", make_clip(tmp_path / "clip.mp4", seconds=2.0))
    _put(site, "report.pdf", make_sample_pdf(tmp_path / "report.pdf"))
    site.executor("slurm-exec", "--concurrency", "2")
    video = site.submit({"input_key": "clip.mp4", "transcode_types": ["mp4_smooth", "thumbnail"]})
    doc = site.submit({"kind": "docparse", "input_key": "report.pdf"})
    for task_id, kind in ((video, "transcode"), (doc, "docparse")):
        t = site.wait(task_id, timeout=180)
        assert t["status"] == "completed", (t, _lines(site, task_id), site.executor_logs())
        assert t["kind"] == kind and t["attempts"] == 1
        assert [a["worker_id"] for a in t["history"]] == ["slurm-exec"]
        assert t["outputs"], t
        with site.admin as c:
            for out in t["outputs"]:
                r = c.get(f"/api/files/{out['bucket']}/{out['key']}")
                assert r.status_code == 200 and len(r.content) == out["size"] > 0, out
        lines = _lines(site, task_id)
        print(f"\n{kind} {task_id}: {len(t['outputs'])} outputs; log:\n" + "\n".join(lines))
        text = "\n".join(lines)
        assert "Submitting Slurm job cvy-" in text and "running on node1" in text
        assert f"Task received: {task_id} kind={kind}" in text  # from the job, on the node
        assert f"Task completed: {task_id}" in text
        assert any(ln.startswith("[processor]") for ln in lines)
        job = next(j for j in site.jobs("all") if task_id in j["name"])
        assert job["comment"] == f"conveyor:task={task_id},attempt=1,worker=slurm-exec"


def test_log_lines_arrive_while_the_job_runs(site: Site) -> None:
    site.executor()
    script = "for i in 1 2 3 4 5 6; do echo tick $i; sleep 1; done"
    task_id = site.container(["sh", "-c", script])
    site.job_of(task_id)
    deadline = time.monotonic() + 30
    while "tick 2" not in "\n".join(_lines(site, task_id)):
        assert time.monotonic() < deadline, _lines(site, task_id)
        time.sleep(0.2)
    assert site.task(task_id)["status"] == "processing"  # seen before the job ended
    assert site.wait(task_id)["status"] == "completed"
    assert "[stdout] tick 6" in _lines(site, task_id)


def test_a_command_that_exits_3_is_retried_then_failed_with_its_code(site: Site) -> None:
    site.executor()
    task_id = site.container(["sh", "-c", "echo trying; exit 3"], max_attempts=2)
    t = site.wait(task_id, timeout=120)
    print("\n" + "\n".join(_lines(site, task_id)))
    print({k: t[k] for k in ("status", "attempts", "error", "error_code")})
    assert t["status"] == "failed" and t["attempts"] == 2
    assert "3" in (t["error"] or "") and "exit" in (t["error"] or "").lower()
    assert [a["outcome"] for a in t["history"]] == ["retry", "failed"]
    assert len({j["id"] for j in site.jobs("all") if task_id in j["name"]}) == 2  # a job each


def test_a_job_over_its_time_limit_ends_as_timeout_on_the_attempt(site: Site) -> None:
    """timeout_s=30 is submitted as ``--time=1``, Slurm's smallest limit (it counts whole
    minutes).  Instead of waiting that minute out (66 s a run), the running job's limit
    is then lowered to nothing (``scontrol update TimeLimit=0``, as a site's admin may
    shorten a job): Slurm's own periodic limit check ends it as TIMEOUT, reason
    TimeLimit, within its period (30 s), and the executor records that on the attempt."""
    site.executor()
    task_id = site.container(["sleep", "600"], timeout_s=30)
    job = site.job_of(task_id)
    limit = site.slurm.run("squeue", "-h", "-j", job["id"], "-o", "%l").stdout.strip()
    assert limit == "1:00", limit  # what the executor asked of Slurm
    site.slurm.run("scontrol", "update", f"JobId={job['id']}", "TimeLimit=0")
    t = site.wait(task_id, timeout=120)
    lines = _lines(site, task_id)
    print("\n" + "\n".join(lines))
    print({k: t[k] for k in ("status", "attempts", "error", "error_code")})
    assert t["status"] == "failed" and t["error_code"] == "slurm_timeout"
    assert t["history"][-1]["error"].startswith(f"Slurm job {job['id']} TIMEOUT")
    assert any("Submitting Slurm job" in ln and "time=1min" in ln for ln in lines), lines
    timed_out = [j for j in site.jobs("TO") if j["id"] == job["id"]]
    assert timed_out and timed_out[0]["reason"] == "TimeLimit", site.jobs("all")


def test_cancel_in_conveyor_scancels_and_cancels_once_slurm_says_it_ended(site: Site) -> None:
    site.executor()
    task_id = site.container(["sleep", "600"])
    job = site.job_of(task_id)
    asked = time.monotonic()
    with site.admin as c:
        r = c.post(f"/api/tasks/{task_id}/cancel")
    assert r.status_code == 200, r.text
    while site.jobs() and any(j["id"] == job["id"] for j in site.jobs()):
        assert time.monotonic() - asked < 10, site.jobs()
        time.sleep(0.1)
    gone = time.monotonic() - asked
    t = site.wait(task_id, timeout=30)
    print(f"\njob {job['id']} left squeue {gone:.1f} s after the cancel")
    print("\n".join(_lines(site, task_id)))
    assert gone < 10
    assert t["status"] == "cancelled" and t["history"][-1]["outcome"] == "cancelled"
    lines = _lines(site, task_id)
    scancel = next(i for i, ln in enumerate(lines) if "scancel Slurm job" in ln)
    ended = next(i for i, ln in enumerate(lines) if "Task cancelled" in ln)
    assert scancel < ended


def test_scancel_from_slurm_fails_the_attempt_with_that_reason(site: Site) -> None:
    site.executor()
    task_id = site.container(["sleep", "600"], max_attempts=3)
    job = site.job_of(task_id)
    site.slurm.run("scancel", job["id"])
    t = site.wait(task_id, timeout=60)
    print("\n" + "\n".join(_lines(site, task_id)))
    print({k: t[k] for k in ("status", "attempts", "error", "error_code")})
    assert t["status"] == "failed" and t["attempts"] == 1  # an operator's scancel is final
    assert t["error_code"] == "slurm_cancelled"
    assert t["error"].startswith(f"Slurm job {job['id']} CANCELLED: cancelled from Slurm's side")


def test_too_many_cpus_waits_with_slurms_reason_in_conveyor_show(site: Site) -> None:
    site.executor()
    task_id = site.container(["true"], cpus=64)
    job = site.job_of(task_id, state="PD")
    deadline = time.monotonic() + 30
    while not (site.task(task_id).get("waiting_reason") or "").endswith("PartitionConfig"):
        assert time.monotonic() < deadline, site.task(task_id)
        time.sleep(0.2)
    show = subprocess.run(
        [sys.executable, "-m", "conveyor", "show", task_id],
        env={**conveyor_env(site), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    print("\n" + show.stdout)
    assert f"waiting Slurm job {job['id']} pending: PartitionConfig" in show.stdout
    assert site.task(task_id)["status"] == "processing"
    with site.admin as c:
        assert c.post(f"/api/tasks/{task_id}/cancel").status_code == 200
    assert site.wait(task_id, timeout=30)["status"] == "cancelled"


def test_a_killed_executor_adopts_its_three_running_jobs(site: Site) -> None:
    proc, _ = site.executor("slurm-exec", "--concurrency", "3")
    ids = [site.container(["sh", "-c", f"echo job {i}; sleep 8; echo done {i}"]) for i in range(3)]
    jobs = {task_id: site.job_of(task_id)["id"] for task_id in ids}
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    restarted, log = site.executor("slurm-exec", "--concurrency", "3")
    seen: dict[str, set[str]] = {task_id: set() for task_id in ids}
    deadline = time.monotonic() + 90
    while not all(site.task(i)["status"] in ("completed", "failed") for i in ids):
        assert time.monotonic() < deadline, site.executor_logs()
        for j in site.jobs("all"):
            for task_id in ids:
                if task_id in j["name"]:
                    seen[task_id].add(j["id"])
        time.sleep(0.2)
    text = log.read_text(errors="replace")
    print("\n" + "\n".join(ln for ln in text.splitlines() if "Adopting" in ln))
    for task_id in ids:
        t = site.task(task_id)
        assert t["status"] == "completed" and t["attempts"] == 1, t
        assert [a["outcome"] for a in t["history"]] == ["completed"]
        assert seen[task_id] == {jobs[task_id]}, seen  # the same job throughout, no second
        assert f"Adopting task {task_id} attempt 1: Slurm job {jobs[task_id]}" in text
        assert sum("Task completed" in ln for ln in _lines(site, task_id)) == 1
    assert restarted.poll() is None
