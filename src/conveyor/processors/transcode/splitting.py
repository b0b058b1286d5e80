"""Split and stitch, the task half: a long transcode becomes a parent and chunk tasks.

``split.py`` holds the media half (where to cut, how to encode a chunk, how to join);
this module runs it through the queue's parent/child mechanism
(``ProcessorContext.spawn`` / ``spawned``, ``WorkerQueue.spawn_children``):

1. **The parent's first run** (``children == 0``) probes the input and, when the task
   asks for full-length video renditions, no streaming group, and the input is longer
   than ``split_after`` (or ``params.split`` is true), plans chunks on the source's
   keyframes (``plan_chunks``) and spawns one child per chunk: the same input, the
   full-length types, and ``params.chunk`` naming the chunk.  A single chunk, a
   streaming group, or no full-length rendition: the task is encoded whole, as before
   (streaming groups are never split: their segments already cut the work into pieces
   of their own, and one decode feeds every rung).
2. **A chunk child** decodes its chunk once into every full-length rendition
   (``chunk_command``: video only), checks each file holds exactly its frames, and
   publishes the chunk files as its outputs (``<prefix>/chunks-<parent>/``).  Any worker
   may claim it; a failed or killed chunk is retried alone (its own attempts).  One
   more child, the **audio part** (``params.audio_part``), encodes the source's whole
   audio once (``audio_command``) beside the video chunks: encoding it in the stitch
   instead put it on the critical path (6 minutes of AAC is ~20 s of a core).
3. **The parent's second run** (``children > 0``, woken by its last child's completion)
   downloads the chunks, joins each rendition with the concat demuxer and a stream
   copy, copies the audio part's file in (``stitch_command``), makes the stills
   and previews from the source, checks every output (and that each stitched rendition
   holds the sum of the chunks' frames), publishes all or nothing like an unsplit task,
   then removes the chunk files (they were intermediate: the chunk tasks keep their
   records, their outputs say ``removed``).
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from conveyor.errors import InputRejected, ProcessorError
from conveyor.models import OutputFile, Task
from conveyor.processors.base import ProcessorContext
from conveyor.processors.transcode.command import GroupPlan, OutputPlan
from conveyor.processors.transcode.encoders import Encoders
from conveyor.processors.transcode.params import ChunkParams, TranscodeParams
from conveyor.processors.transcode.probe import MediaInfo
from conveyor.processors.transcode.runner import FFmpegResult, Throttle, run_ffmpeg, tidy_lines
from conveyor.processors.transcode.split import (
    Chunk,
    audio_command,
    audio_name,
    chunk_command,
    chunk_name,
    concat_list,
    plan_chunks,
    read_frame_times,
    stitch_command,
)
from conveyor.storage.base import validate_key

if TYPE_CHECKING:
    from conveyor.processors.transcode import TranscodeProcessor

log = logging.getLogger(__name__)

# how long the stitch waits for its children's outputs to be made visible (a child's
# completion commits first and publishes right after; the sweep finishes a crash)
PUBLISHED_WAIT_S = 120.0
CHUNK_ROLE = "chunk"


def full_length(plans: list[OutputPlan]) -> list[OutputPlan]:
    """The renditions chunks are made of: whole-length video (no still, no preview)."""
    return [p for p in plans if not p.profile.is_still and not p.profile.is_preview]


def split_reason(
    params: TranscodeParams,
    split_after: float,
    info: MediaInfo,
    plans: list[OutputPlan],
    groups: list[GroupPlan],
) -> str | None:
    """Why this task is split, or None to encode it whole."""
    if params.split is False or not full_length(plans):
        return None
    if groups:
        return None  # streaming groups are not split (see the module docs)
    if params.split:
        return "params.split is true"
    if info.duration > split_after:
        return f"the input is {info.duration:.1f} s, longer than {split_after:g} s"
    return None


def chunk_prefix(prefix: str, parent_id: str) -> str:
    return f"{prefix}/chunks-{parent_id}"


def spawn_chunks(
    proc: TranscodeProcessor,
    ctx: ProcessorContext,
    params: TranscodeParams,
    src: Path,
    info: MediaInfo,
    plans: list[OutputPlan],
    reason: str,
) -> list[Task]:
    """The chunk tasks of this input (none when it makes a single chunk)."""
    ctx.report_progress(3.0, "split", "listing the input's keyframes")
    frames = read_frame_times(proc.ffprobe, src, info)
    chunks = plan_chunks(frames, proc.config.chunk_seconds)
    if len(chunks) < 2:
        ctx.log(f"Split not worth it ({reason}): the input makes {len(chunks)} chunk")
        return []
    types = [p.name for p in full_length(plans)]
    ctx.log(
        f"Split: {reason}; {len(frames.times)} frames in {len(chunks)} chunks of about "
        f"{proc.config.chunk_seconds:g} s on the source's keyframes, each encoding "
        f"{', '.join(types)}; the audio is encoded once by a part of its own, the stills "
        "and previews by the stitch"
    )
    base = params.model_dump(exclude_none=True, exclude={"chunk", "split", "audio_part"})
    children = []
    voiced = [p.name for p in full_length(plans) if p.audio]
    if voiced and info.has_audio:  # first: claimed first, beside the first video chunks
        children.append(
            Task(
                kind=ctx.task.kind,
                input=ctx.task.input,
                params={**base, "transcode_types": voiced, "audio_part": True},
                max_attempts=ctx.task.max_attempts,
            )
        )
    for c in chunks:
        spec = ChunkParams(
            index=c.index,
            count=len(chunks),
            first=c.first,
            frames=c.frames,
            start=c.start,
            end=c.end,
            frame_s=frames.frame_s,
        )
        children.append(
            Task(
                kind=ctx.task.kind,
                input=ctx.task.input,
                params={**base, "transcode_types": types, "chunk": spec.model_dump()},
                max_attempts=ctx.task.max_attempts,
            )
        )
    return children


def run_chunk(
    proc: TranscodeProcessor,
    ctx: ProcessorContext,
    params: TranscodeParams,
    src: Path,
    info: MediaInfo,
    plans: list[OutputPlan],
    encoders: Encoders,
    started: float,
    prefix: str,
) -> list[OutputFile]:
    """Encode one chunk into every full-length rendition and publish the chunk files."""
    from conveyor.processors.transcode import _Item

    spec = params.chunk
    assert spec is not None
    if ctx.task.parent_id is None:
        raise InputRejected("params.chunk is set by a split task for its chunks only")
    plans = full_length(plans)
    if not plans:
        raise InputRejected("a chunk task needs full-length video renditions")
    chunk = Chunk(spec.index, spec.first, spec.frames, spec.start, spec.end)
    outdir = plans[0].path.parent
    argv = chunk_command(proc.ffmpeg, src, info, chunk, spec.frame_s, plans, encoders, outdir)
    what = (
        f"chunk {spec.index + 1} of {spec.count} ({chunk.duration:.1f} s from {spec.start:.2f} s)"
    )
    ctx.log(f"Chunk: {what}, {spec.frames} frames -> {', '.join(p.name for p in plans)}")
    result = _run(ctx, argv, chunk.duration, f"encoding {what}", started, 3.0, 90.0)
    ctx.report_progress(93.0, "verify", "counting each chunk file's frames")
    items = []
    for plan in plans:
        path = outdir / chunk_name(spec.index, plan.name)
        got = count_frames(proc.ffprobe, path)
        if got != spec.frames:
            hint = tidy_lines(result.stderr_tail, str(src))
            raise ProcessorError(
                f"chunk {spec.index} of {plan.name} holds {got} frames, expected "
                f"{spec.frames}" + (f" (ffmpeg: {hint})" if hint else ""),
                retryable=True,
            )
        key = validate_key(f"{chunk_prefix(prefix, ctx.task.parent_id)}/{path.name}")
        meta = {
            "role": CHUNK_ROLE,
            "chunk": spec.index,
            "frames": spec.frames,
            "rendition": plan.name,
            "encoder": encoders.for_codec(plan.profile.codec),
        }
        items.append(_Item(f"chunk/{plan.name}", key, path, plan.profile.content_type, meta))
    outputs = proc._publish(ctx, items)
    speed = chunk.duration / result.elapsed if result.elapsed else 0.0
    if outputs:
        outputs[0].meta["encode_speed"] = round(speed, 3)
    ctx.log(
        f"Chunk completed: {len(outputs)} file(s) in {result.elapsed:.2f} s ({speed:.2f}x realtime)"
    )
    ctx.report_progress(100.0, "upload", f"{len(outputs)} chunk file(s) published")
    return outputs


def audio_key(plan: OutputPlan) -> str:
    return f"{plan.profile.audio_bitrate}-{plan.profile.audio_channels}"


def run_audio_part(
    proc: TranscodeProcessor,
    ctx: ProcessorContext,
    src: Path,
    info: MediaInfo,
    plans: list[OutputPlan],
    started: float,
    prefix: str,
) -> list[OutputFile]:
    """The split's audio part: the source's audio encoded once per bitrate and channel
    count its renditions want, for the stitch to copy (a part of its own, so the encode
    runs beside the video chunks instead of after them)."""
    from conveyor.processors.transcode import _Item

    if ctx.task.parent_id is None:
        raise InputRejected("params.audio_part is set by a split task for its audio only")
    if not info.has_audio:
        raise InputRejected("the input has no audio for an audio part to encode")
    wanted = {audio_key(p): p for p in full_length(plans) if p.audio}
    outdir = ctx.workdir / "audio"
    outdir.mkdir(parents=True, exist_ok=True)
    items = []
    for n, (key, plan) in enumerate(sorted(wanted.items())):
        p = plan.profile
        path = outdir / audio_name(p.audio_bitrate, p.audio_channels)
        argv = audio_command(proc.ffmpeg, src, info, p.audio_bitrate, p.audio_channels, path)
        span = 90.0 / len(wanted)
        _run(ctx, argv, info.duration, f"encoding the audio ({key})", started, 3 + n * span, span)
        parent = ctx.task.parent_id
        stored = validate_key(f"{chunk_prefix(prefix, parent)}/{path.name}")
        meta = {"role": CHUNK_ROLE, "audio": key}
        items.append(_Item(f"audio/{key}", stored, path, "audio/mp4", meta))
    ctx.log(f"Audio part: {', '.join(sorted(wanted))} encoded once for the stitch")
    return proc._publish(ctx, items)


def published_children(ctx: ProcessorContext) -> list[Task]:
    """The children, once every output of theirs is at its final key."""
    deadline = time.monotonic() + PUBLISHED_WAIT_S
    while True:
        kids = ctx.spawned()
        if all(o.staged_key is None for k in kids for o in k.outputs):
            return kids
        if time.monotonic() > deadline:
            raise ProcessorError(
                f"the chunks' outputs were not published within {PUBLISHED_WAIT_S:g} s",
                retryable=True,
            )
        if ctx.cancel_event.wait(0.5):
            from conveyor.errors import TaskCancelled

            raise TaskCancelled("cancelled")


def stitch(
    proc: TranscodeProcessor,
    ctx: ProcessorContext,
    kids: list[Task],
    src: Path,
    info: MediaInfo,
    plans: list[OutputPlan],
    started: float,
) -> tuple[FFmpegResult, int]:
    """Join each full-length rendition's chunks (downloaded in order) into its final file;
    returns the last join's result and the frames every stitched rendition must hold."""
    specs = []
    files: dict[str, list[OutputFile]] = {}
    audio: dict[str, OutputFile] = {}  # the audio part's files, by bitrate-channels
    for kid in kids:
        if kid.params.get("audio_part"):
            audio.update({str(o.meta.get("audio")): o for o in kid.outputs})
    for kid in sorted((k for k in kids if k.params.get("chunk")), key=_chunk_index):
        spec = ChunkParams.model_validate(kid.params.get("chunk") or {})
        specs.append(spec)
        for o in kid.outputs:
            files.setdefault(str(o.meta.get("rendition", "")), []).append(o)
    if [s.index for s in specs] != list(range(len(specs))):
        raise ProcessorError(
            f"the chunks are not one partition of the input: indexes {[s.index for s in specs]}",
            retryable=False,
        )
    expected = sum(s.frames for s in specs)
    work = ctx.workdir / "stitch"
    result = FFmpegResult(0, [], 0.0)
    todo = full_length(plans)
    for n, plan in enumerate(todo):
        parts = files.get(plan.name, [])
        if len(parts) != len(specs):
            raise ProcessorError(
                f"{plan.name}: {len(parts)} chunk file(s) for {len(specs)} chunks",
                retryable=False,
            )
        folder = work / plan.name
        folder.mkdir(parents=True, exist_ok=True)
        names = []
        ctx.report_progress(
            3.0 + 80.0 * n / len(todo), "download", f"downloading {plan.name}'s chunks"
        )
        for spec, o in zip(specs, parts, strict=True):
            name = chunk_name(spec.index, plan.name)
            try:
                ctx.storage.get_file(o.bucket, o.key, folder / name)
            except Exception as exc:
                raise ProcessorError(
                    f"could not read chunk {spec.index} of {plan.name} ({o.bucket}/{o.key}): {exc}",
                    retryable=True,
                ) from exc
            names.append(name)
        listing = folder / "chunks.txt"
        listing.write_text(concat_list(names))
        audio_path = None
        part = audio.get(audio_key(plan)) if plan.audio else None
        if part is not None:  # encoded once by the audio part: copied here
            audio_path = folder / audio_name(
                plan.profile.audio_bitrate, plan.profile.audio_channels
            )
            try:
                ctx.storage.get_file(part.bucket, part.key, audio_path)
            except Exception as exc:
                raise ProcessorError(
                    f"could not read the audio part ({part.bucket}/{part.key}): {exc}",
                    retryable=True,
                ) from exc
        argv = stitch_command(proc.ffmpeg, listing, src, info, plan, audio_path)
        lo, hi = 3.0 + 80.0 * n / len(todo), 3.0 + 80.0 * (n + 1) / len(todo)
        how = "audio copied from the audio part" if audio_path else "audio encoded here"
        ctx.log(f"Stitch: {plan.name} from {len(names)} chunks (stream copy; {how})")
        result = _run(ctx, argv, info.duration, f"stitching {plan.name}", started, lo, hi - lo)
        got = count_frames(proc.ffprobe, plan.path)
        if got != expected:
            raise ProcessorError(
                f"{plan.name}: the stitched file holds {got} frames, the chunks {expected}",
                retryable=True,
            )
    return result, expected


def remove_chunks(ctx: ProcessorContext, kids: list[Task]) -> int:
    """The chunk files, once the stitched outputs are staged: best effort (a file left
    behind is only storage)."""
    removed = 0
    for kid in kids:
        for o in kid.outputs:
            if o.meta.get("role") != CHUNK_ROLE:
                continue
            try:
                ctx.storage.delete(o.bucket, o.key)
                removed += 1
            except Exception as exc:
                log.warning("chunk file %s/%s not removed: %s", o.bucket, o.key, exc)
    return removed


def count_frames(ffprobe: str, path: Path) -> int:
    """Video packets in ``path`` (one per frame in what we write): no decoding."""
    argv = [ffprobe, "-v", "error", "-select_streams", "v:0", "-count_packets"]
    argv += ["-show_entries", "stream=nb_read_packets", "-of", "csv=p=0", str(path)]
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    try:
        return int(proc.stdout.strip().strip(",") or -1)
    except ValueError:
        return -1


def _chunk_index(task: Task) -> int:
    chunk = task.params.get("chunk") or {}
    return int(chunk.get("index", 0)) if isinstance(chunk, dict) else 0


def _run(
    ctx: ProcessorContext,
    argv: list[str],
    duration: float,
    what: str,
    started: float,
    base: float,
    span: float,
) -> FFmpegResult:
    throttle = Throttle(0.5)

    def progress(pct: float, speed: float | None) -> None:
        if throttle.ready(force=pct >= 100):
            msg = what + (f" at {speed:g}x" if speed else "")
            ctx.report_progress(base + span * pct / 100, "transcode", msg)

    timeout = None
    if ctx.timeout_s:
        timeout = max(1.0, ctx.timeout_s - (time.monotonic() - started))
    on: Callable[[float, float | None], None] = progress
    return run_ffmpeg(
        argv,
        duration=max(duration, 0.1),
        cancel_event=ctx.cancel_event,
        timeout_s=timeout,
        on_progress=on,
    )
