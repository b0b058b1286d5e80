"""Does one decode feeding every rendition pay off, and what does Conveyor add on top?

    python bench/transcode_single_pass.py [--repeats 3] [--duration 10] [--types a,b,...]
                                          [--parts abcd] [--ladder hls]

On a generated 1080p clip with audio (lavfi ``testsrc2`` + ``sine``):

(a) single pass vs naive: the one ffmpeg process that writes every requested
    type, against one ffmpeg process per type run one after the other (seed
    002's way).  Both are built by the same command builder from the same
    profile table, so only the process layout differs.
(b) processor overhead: ``TranscodeProcessor.run`` (download from a local
    folder store, ffprobe, the same ffmpeg command, ffprobe of every output,
    upload) against that bare ffmpeg command alone.
(c) a whole queued task against the bare ffmpeg command.
(d) the streaming ladder (issue 18): the one process that writes the 5-rung HLS
    group (1080p to 234p + AAC, keyframes aligned, 4 s segments) against five
    ffmpeg runs of one rung each (the audio encoded in the first), built by the
    same command builder, so only the process layout differs.

Each figure is the median of ``--repeats`` runs, the contenders alternating
so that changing machine load hits both alike.  CPU seconds (user + sys of
this process and of every child it waited for) are printed next to wall
time: on a shared machine the wall clock measures the neighbours as much as
the encoder.  Encoders are the ones the processor picks on this host.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from conveyor.config import load_settings
from conveyor.models import InputRef, Task, TaskStatus
from conveyor.processors.base import ProcessorContext
from conveyor.processors.transcode import TranscodeProcessor
from conveyor.processors.transcode.command import build_command, plan_groups, plan_outputs
from conveyor.processors.transcode.encoders import detect_encoders
from conveyor.processors.transcode.probe import MediaInfo, probe_input
from conveyor.processors.transcode.profiles import Profile, StreamGroup
from conveyor.server.runtime import Runtime
from conveyor.service import SubmitRequest
from conveyor.storage.local import LocalBlobStore


@dataclass
class Sample:
    wall: float
    cpu: float


def make_source(path: Path, seconds: float) -> None:
    subprocess.run(
        [
            "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
            "-f", "lavfi", "-i", f"testsrc2=size=1920x1080:rate=25:duration={seconds}",
            "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}",
            "-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-pix_fmt", "yuv420p",
            "-c:a", "aac", "-b:a", "128k", "-shortest", str(path),
        ],
        check=True,
    )  # fmt: skip


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn: Callable[[], object]) -> Sample:
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    fn()
    return Sample(time.perf_counter() - wall0, cpu_seconds() - cpu0)


def show(s: Sample) -> str:
    return f"{s.wall:7.2f} s wall {s.cpu:7.2f} s CPU"


def interleaved(repeats: int, **fns: Callable[[], object]) -> dict[str, list[Sample]]:
    samples: dict[str, list[Sample]] = {name: [] for name in fns}
    for i in range(repeats):
        for name, fn in fns.items():
            s = timed(fn)
            samples[name].append(s)
            print(f"    run {i + 1}/{repeats} {name:12} {show(s)}", flush=True)
    return samples


def med(samples: list[Sample]) -> Sample:
    return Sample(
        statistics.median(s.wall for s in samples), statistics.median(s.cpu for s in samples)
    )


def run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


def pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:+.1f} %" if whole else "n/a"


def ladder_commands(
    proc: TranscodeProcessor, group: StreamGroup, src: Path, info: MediaInfo, out: Path
) -> tuple[list[str], list[list[str]], list[str]]:
    """The group in one process, the same group one rung per process, and the rungs."""
    encoders = detect_encoders(proc.ffmpeg, proc.encoder_mode)
    (plan,) = plan_groups(info, [group], out / "one")
    plan.dir.mkdir(parents=True)
    single = build_command(proc.ffmpeg, src, info, [], encoders, [plan])
    separate = []
    for i, rung in enumerate(plan.rungs):
        one = replace(plan, dir=out / f"rung{i}", rungs=(rung,), audio=plan.audio and i == 0)
        one.dir.mkdir(parents=True)
        separate.append(build_command(proc.ffmpeg, src, info, [], encoders, [one]))
    return single, separate, [f"{r.name} {r.width}x{r.height}" for r in plan.rungs]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="runs per measurement (median)")
    ap.add_argument("--duration", type=float, default=10.0, help="clip length in seconds")
    ap.add_argument("--types", default="", help="comma-separated types (default: all seven)")
    ap.add_argument("--parts", default="abcd", help="which measurements (default: abcd)")
    ap.add_argument("--ladder", default="hls", help="the streaming group for (d) (default: hls)")
    args = ap.parse_args()
    parts = set(args.parts)
    # SIGTERM unwinds like Ctrl-C: subprocess.run kills its ffmpeg and the temp dir goes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        print("ffmpeg and ffprobe are required", file=sys.stderr)
        return 2

    proc = TranscodeProcessor(None)
    types = [t.strip() for t in args.types.split(",") if t.strip()] or proc.known_types()[:7]
    profiles = [p for p in (proc.profiles[t] for t in types) if isinstance(p, Profile)]
    if len(profiles) != len(types):
        print("--types takes file renditions; streaming groups go to --ladder", file=sys.stderr)
        return 2
    group = proc.profiles.get(args.ladder)
    if "d" in parts and not isinstance(group, StreamGroup):
        print(f"--ladder {args.ladder!r} is not a streaming group", file=sys.stderr)
        return 2
    encoders = detect_encoders(proc.ffmpeg, proc.encoder_mode)
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as tmp_s:
        tmp = Path(tmp_s)
        src = tmp / "source.mp4"
        print(f"generating a {args.duration:g} s 1920x1080 H.264/AAC clip ...", flush=True)
        make_source(src, args.duration)
        info = probe_input(proc.ffprobe, src)
        print(
            f"host: {os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f}, "
            f"ffmpeg {encoders.ffmpeg_version}, h264={encoders.h264} h265={encoders.h265} "
            f"nvdec={encoders.nvdec}"
        )
        if parts & set("abc"):
            print(f"types: {', '.join(types)}")
        print()

        out = tmp / "out"
        out.mkdir()
        plans = plan_outputs(info, profiles, out, proc.preview_seconds)
        single = build_command(proc.ffmpeg, src, info, plans, encoders)
        separate = [build_command(proc.ffmpeg, src, info, [p], encoders) for p in plans]
        a = b = c = d = None
        encode_walls: list[float] = []

        def one_per_type() -> None:
            for argv in separate:
                run(argv)

        if "a" in parts:
            print("(a) one ffmpeg for all types vs one ffmpeg per type")
            a = interleaved(args.repeats, single_pass=lambda: run(single), separate=one_per_type)

        store = LocalBlobStore(tmp / "buckets")
        store.put_file("input", "bench/source.mp4", src)

        def keep_encode_time(line: str) -> None:
            m = re.match(r"Transcode completed: .* in ([0-9.]+) s", line)
            if m:
                encode_walls.append(float(m.group(1)))

        def processor_run() -> None:
            workdir = tmp / "work"
            shutil.rmtree(workdir, ignore_errors=True)
            workdir.mkdir()
            task = Task(
                input=InputRef(bucket="input", key="bench/source.mp4"),
                params={"transcode_types": types},
            )
            ctx = ProcessorContext(
                task=task,
                workdir=workdir,
                storage=store,
                output_bucket="output",
                report_progress=lambda p, ph, m: None,
                log=keep_encode_time,
                cancel_event=threading.Event(),
            )
            proc.run(ctx)

        if "b" in parts:
            print("\n(b) TranscodeProcessor.run vs the bare ffmpeg command it runs")
            b = interleaved(args.repeats, processor=processor_run, bare_ffmpeg=lambda: run(single))

        if "c" in parts:
            print("\n(c) a whole Conveyor task (submit -> queue -> worker -> completed)", end="")
            print(" vs bare ffmpeg")
            settings = load_settings(data_dir=tmp / "svc", trigger_enabled=False)
            runtime = Runtime.build(settings, with_worker=True, with_trigger=False, concurrency=1)
            runtime.service.storage.put_file("input", "bench/source.mp4", src)
            runtime.start()

            def whole_task() -> None:
                res = runtime.service.submit(
                    SubmitRequest(input_key="bench/source.mp4", transcode_types=types)
                )
                while True:
                    t = runtime.service.get(res.task.id)
                    if t.status.is_final:
                        assert t.status == TaskStatus.COMPLETED, t.error
                        return
                    time.sleep(0.01)

            try:
                c = interleaved(
                    args.repeats, whole_task=whole_task, bare_ffmpeg=lambda: run(single)
                )
            finally:
                runtime.stop()

        if "d" in parts:
            assert isinstance(group, StreamGroup)
            ladder_one, ladder_five, rungs = ladder_commands(proc, group, src, info, tmp / "ladder")
            print(f"\n(d) the {args.ladder} ladder in one ffmpeg vs one ffmpeg per rung")
            print(f"    rungs: {', '.join(rungs)}" + (" + AAC" if info.has_audio else ""))

            def one_per_rung() -> None:
                for argv in ladder_five:
                    run(argv)

            d = interleaved(
                args.repeats, one_process=lambda: run(ladder_one), per_rung=one_per_rung
            )

    n = len(types)
    print(f"\nresults: median of {args.repeats}, load average now {os.getloadavg()[0]:.1f}")
    if a is not None:
        single_s, naive_s = med(a["single_pass"]), med(a["separate"])
        print(f"  (a) single pass ({n} outputs, 1 decode): {show(single_s)}")
        print(f"      separate runs ({n} decodes):         {show(naive_s)}")
        print(
            f"      single pass / separate: wall {single_s.wall / naive_s.wall:.2f}x, "
            f"CPU {single_s.cpu / naive_s.cpu:.2f}x"
        )
    if b is not None:
        proc_s, bare_s = med(b["processor"]), med(b["bare_ffmpeg"])
        # run() minus its own ffmpeg wall time: download, probes, checks, uploads, process
        # handling.  Free of the encoder's run-to-run noise, which swamps the plain difference.
        walls = [s.wall for s in b["processor"]]
        outside = statistics.median(t - e for t, e in zip(walls, encode_walls, strict=True))
        print(f"  (b) TranscodeProcessor.run: {show(proc_s)}")
        print(f"      bare ffmpeg command:    {show(bare_s)}")
        print(
            f"      overhead: wall {proc_s.wall - bare_s.wall:+.2f} s "
            f"({pct(proc_s.wall - bare_s.wall, bare_s.wall)}), "
            f"CPU {proc_s.cpu - bare_s.cpu:+.2f} s ({pct(proc_s.cpu - bare_s.cpu, bare_s.cpu)})"
        )
        print(
            f"      wall time in run() outside ffmpeg: {outside:.2f} s "
            f"({pct(outside, bare_s.wall)} of the bare command)"
        )
    if c is not None:
        task_s, bare_c = med(c["whole_task"]), med(c["bare_ffmpeg"])
        print(f"  (c) whole queued task:   {show(task_s)}")
        print(f"      bare ffmpeg command: {show(bare_c)}")
        print(
            f"      overhead: wall {task_s.wall - bare_c.wall:+.2f} s "
            f"({pct(task_s.wall - bare_c.wall, bare_c.wall)}), "
            f"ratio {task_s.wall / bare_c.wall:.3f}x"
        )
    if d is not None:
        one_s, five_s = med(d["one_process"]), med(d["per_rung"])
        k = len(ladder_five)
        print(f"  (d) {args.ladder} ladder, one process ({k} rungs, 1 decode): {show(one_s)}")
        print(f"      one ffmpeg per rung ({k} runs, {k} decodes):     {show(five_s)}")
        print(
            f"      one process / per rung: wall {one_s.wall / five_s.wall:.2f}x, "
            f"CPU {one_s.cpu / five_s.cpu:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
