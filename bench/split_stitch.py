"""Split and stitch (issue 18, show point 3): how much faster is a long input with two
workers than with one, each worker pinned to one core?

    python bench/split_stitch.py [--seconds 360] [--types mp4_standard] [--unsplit]

A generated 1080p clip with audio (lavfi ``testsrc2`` + ``sine``, a keyframe every 2 s,
``--seconds`` long, 6 minutes by default) is transcoded as one task, longer than the
split threshold, so it is split into chunk tasks and stitched:

* **one**: ``conveyor serve`` and one ``conveyor worker`` pinned to core 0 (``taskset
  -c 0``): the chunks one after the other, then the stitch;
* **two**: the same with two workers pinned to cores 0 and 1: the chunks two at a time.

Printed: both wall times (submit to completed, read from the task), their ratio (goal:
two / one <= 0.6), the stitch's share of each total (the parent's last run: joining
the chunks with a stream copy and copying in the audio part's file, against the whole
task), and for each worker the seconds it spent in the children with the CPU seconds
it used (its process and its ffmpeg runs): on a shared machine a worker pinned to a
core gets only a share of it, and CPU / busy seconds says how much.
``--unsplit`` adds the same input encoded whole (``params.split: false``) by one pinned
worker: the time a long input takes without split and stitch.

The machine's load (``uptime``) is printed before and after: other processes on these
cores slow both runs, and the ratio is only as good as the load was even.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import free_port, wait_healthy  # noqa: E402

TYPES = ["mp4_standard"]  # --types
ENV = {
    "CONVEYOR_HEARTBEAT_INTERVAL": "1",
    "CONVEYOR_LEASE_SECONDS": "30",
    "CONVEYOR_REAP_INTERVAL": "2",
    "CONVEYOR_POLL_INTERVAL": "0.2",
    "CONVEYOR_TRANSCODE_ENCODER": "cpu",
}


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def cpu_seconds(pid: int) -> float:
    """CPU time of a live process and of the children it waited for (its ffmpeg runs)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def make_clip(path: Path, seconds: float) -> Path:
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y"]
    cmd += ["-f", "lavfi", "-i", f"testsrc2=size=1920x1080:rate=25:duration={seconds}"]
    cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}"]
    cmd += ["-c:v", "libx264", "-preset", "ultrafast", "-g", "50", "-pix_fmt", "yuv420p"]
    cmd += ["-c:a", "aac", "-b:a", "64k", "-shortest", str(path)]
    subprocess.run(cmd, check=True)
    return path


class Stack:
    """``conveyor serve`` on a fresh data folder and pinned ``conveyor worker`` processes."""

    def __init__(self, root: Path, cores: list[int]) -> None:
        self.data = root / "data"
        self.data.mkdir(parents=True)
        self.env = {
            **os.environ,
            **ENV,
            "CONVEYOR_DATA_DIR": str(self.data),
            "CONVEYOR_CONFIG": str(self.data / "no-config.yaml"),
        }
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        log = root / "serve.log"
        self.procs = [
            self._start(["serve", "--port", str(port), "--no-trigger"], log, None),
        ]
        wait_healthy(self.url, self.procs[0], log)
        self.cores = cores
        for core in cores:
            args = ["worker", "--worker-id", f"core{core}", "--concurrency", "1"]
            self.procs.append(self._start(args, root / f"worker{core}.log", core))
        self.client = httpx.Client(base_url=self.url, timeout=120)

    def _start(self, args: list[str], log: Path, core: int | None) -> subprocess.Popen[bytes]:
        pin = ["taskset", "-c", str(core)] if core is not None else []
        return subprocess.Popen(
            [*pin, sys.executable, "-m", "conveyor", *args],
            env=self.env,
            stdout=open(log, "ab"),  # owned by the child
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def run(self, clip: Path, split: bool) -> dict[str, Any]:
        r = self.client.put("/api/files/input/bench/long.mp4", content=clip.read_bytes())
        r.raise_for_status()
        r = self.client.post(
            "/api/queue/add",
            json={
                "input_bucket": "input",
                "input_key": "bench/long.mp4",
                "transcode_types": TYPES,
                "params": {"split": split},
            },
        )
        r.raise_for_status()
        task_id = r.json()["task_id"]
        while True:
            t: dict[str, Any] = self.client.get(f"/api/tasks/{task_id}").json()
            if t["status"] in ("completed", "failed", "cancelled"):
                break
            time.sleep(0.5)
        if t["status"] != "completed":
            raise SystemExit(f"task {task_id} {t['status']}: {t.get('error')}")
        kids = self.client.get(f"/api/tasks/{task_id}/children").json()["children"]
        busy: dict[str, float] = {}  # each worker's seconds in chunk and audio runs
        for k in kids:
            for a in k["history"]:
                if a["outcome"] == "completed":
                    run = (_at(a["finished_at"]) - _at(a["started_at"])).total_seconds()
                    busy[a["worker_id"]] = busy.get(a["worker_id"], 0.0) + run
        t["busy"] = busy
        workers = zip(self.cores, self.procs[1:], strict=True)
        t["cpu"] = {f"core{c}": cpu_seconds(p.pid) for c, p in workers}
        return t

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def figures(task: dict[str, Any]) -> tuple[float, float]:
    """(wall seconds from submit to completed, the stitch run's seconds)."""
    wall = (_at(task["finished_at"]) - _at(task["created_at"])).total_seconds()
    last = task["history"][-1]
    stitch = (_at(last["finished_at"]) - _at(last["started_at"])).total_seconds()
    return wall, stitch if task["children"] else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=360.0)
    ap.add_argument("--types", default="mp4_standard")
    ap.add_argument("--unsplit", action="store_true", help="also encode it whole, one worker")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    TYPES[:] = [t for t in args.types.split(",") if t]
    if shutil.which("taskset") is None:
        raise SystemExit("taskset (util-linux) is needed to pin the workers")
    root = Path(tempfile.mkdtemp(prefix="split-bench-"))
    try:
        print(f"load before: {uptime()}", flush=True)
        t0 = time.monotonic()
        clip = make_clip(root / "long.mp4", args.seconds)
        print(
            f"input: {args.seconds:g} s 1920x1080 25 fps + AAC, keyframe every 2 s "
            f"({clip.stat().st_size / 1e6:.1f} MB, made in {time.monotonic() - t0:.1f} s); "
            f"types {','.join(TYPES)}",
            flush=True,
        )
        runs: list[tuple[str, list[int], bool]] = [("one", [0], True), ("two", [0, 1], True)]
        if args.unsplit:
            runs.append(("unsplit", [0], False))
        out: dict[str, tuple[float, float, int]] = {}
        for name, cores, split in runs:
            stack = Stack(root / name, cores)
            try:
                task = stack.run(clip, split)
            finally:
                stack.stop()
            wall, stitch = figures(task)
            out[name] = (wall, stitch, task["children"])
            share = f", stitch {stitch:.1f} s = {stitch / wall:.1%} of it" if stitch else ""
            busy = ", ".join(
                f"{w} {s:.1f} s ({task['cpu'].get(w, 0.0):.1f} s CPU)"
                for w, s in sorted(task["busy"].items())
            )
            print(
                f"{name:>8}: {len(cores)} worker(s) on core(s) {cores}: {wall:.1f} s"
                f" ({task['children']} children){share}; in the children: {busy or '-'}"
                f"  [{uptime()}]",
                flush=True,
            )
        one, two = out["one"][0], out["two"][0]
        print(f"ratio two / one = {two / one:.2f} (goal <= 0.6)")
        if "unsplit" in out:
            print(f"ratio two / unsplit = {two / out['unsplit'][0]:.2f}")
        print(f"load after: {uptime()}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
