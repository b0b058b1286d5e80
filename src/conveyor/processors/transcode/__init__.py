"""The ``transcode`` kind: one input video, any of the table's renditions, one ffmpeg.

The order of ``run`` is the point: reject a bad input before encoding,
encode everything in one pass, check every output, and only then publish —
so a task either completes with all its renditions or publishes nothing.
Streaming groups (``hls``, ``dash``, ``cmaf``: see ``profiles.StreamGroup``) are
part of the same pass: their rungs are branches of the same graph, and their
playlists, manifests and segments are checked (``streaming.py``) and staged with
the rest.
"""

from __future__ import annotations

import logging
import re
import subprocess
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, ClassVar, cast, get_args

from conveyor.errors import (
    InputRejected,
    InvalidParams,
    InvalidRequest,
    ProcessorError,
    TaskCancelled,
)
from conveyor.models import InputRef, OutputFile, Task, utcnow
from conveyor.processors.base import (
    Choice,
    FormField,
    KindForm,
    Processor,
    ProcessorContext,
    download_input,
    publishing,
)
from conveyor.processors.transcode import splitting
from conveyor.processors.transcode.command import (
    GroupPlan,
    OutputPlan,
    build_command,
    plan_groups,
    plan_outputs,
)
from conveyor.processors.transcode.encoders import (
    EncoderMode,
    Encoders,
    EncoderUnavailable,
    detect_encoders,
    gpu_failure,
)
from conveyor.processors.transcode.params import TranscodeParams
from conveyor.processors.transcode.probe import MediaInfo, OutputInfo, probe_input, verify_output
from conveyor.processors.transcode.profiles import (
    BUILTIN_GROUPS,
    BUILTIN_PROFILES,
    Entry,
    Profile,
    StreamGroup,
    build_profile_table,
)
from conveyor.processors.transcode.runner import (
    FFmpegFailed,
    FFmpegResult,
    Throttle,
    blames_input,
    run_ffmpeg,
    tidy_lines,
)
from conveyor.processors.transcode.settings import TranscodeSettings
from conveyor.processors.transcode.streaming import GroupResult, unnamed_files, verify_group
from conveyor.storage.base import validate_key

from .labels import LABELS

if TYPE_CHECKING:
    from prometheus_client.core import Metric

log = logging.getLogger(__name__)

DEFAULT_PREVIEW_SECONDS = 10.0
SPEED_SAMPLE = 20  # recent completed tasks averaged into conveyor_transcode_speed_ratio
# files staged side by side: a streaming group is hundreds of small files, and each
# put is a round trip (S3, the API) or an fsync (a local folder)
STAGE_THREADS = 8
_SAFE_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,8}$")
# the video files it takes (the upload trigger queues these, and only these)
VIDEO_SUFFIXES = frozenset(
    {".mp4", ".mov", ".avi", ".mkv", ".wmv", ".flv", ".webm", ".m4v", ".mpeg", ".mpg"}
)


class TranscodeProcessor(Processor):
    """Settings (``TranscodeSettings``, all optional): ``transcode_profiles``, ``ffmpeg``,
    ``ffprobe``, ``encoder`` (auto | cpu | nvenc), ``preview_seconds`` and the
    ``default_transcode_types``; read with defaults so a bare ``TranscodeProcessor(None)``
    works in tests and tools.
    """

    kind = "transcode"
    params_model = TranscodeParams
    settings_model = TranscodeSettings
    config: TranscodeSettings
    suffixes = VIDEO_SUFFIXES
    content_types = frozenset({"video/*"})
    # the transcoding API's body: POST /api/queue/add without a kind is a transcode, and
    # its transcode_types sit at the top level of the body
    submit_default = True
    request_fields = ("transcode_types",)
    labels: ClassVar[dict[str, dict[str, str]]] = LABELS

    def __init__(self, settings: Any = None) -> None:
        super().__init__(settings)
        self.ffmpeg: str = self.config.ffmpeg or "ffmpeg"
        self.ffprobe: str = self.config.ffprobe or "ffprobe"
        mode = self.config.encoder or "auto"
        if mode not in get_args(EncoderMode):
            raise ValueError(f"encoder must be auto, cpu or nvenc, not {mode!r}")
        self.encoder_mode: EncoderMode = cast(EncoderMode, mode)
        self.preview_seconds = float(self.config.preview_seconds or DEFAULT_PREVIEW_SECONDS)
        self.profiles: dict[str, Entry] = build_profile_table(self.config.profiles or {})

    # -- submit time -----------------------------------------------------------------
    def with_defaults(self, params: dict[str, Any]) -> dict[str, Any]:
        """No types named: the configured defaults (``DEFAULT_TRANSCODE_TYPES``); an empty
        list is a mistake, not a request for the defaults."""
        types = params.get("transcode_types")
        if types == []:
            raise InvalidRequest("transcode_types is empty: name at least one type")
        if types is None:
            return {**params, "transcode_types": list(self.config.default_types)}
        return params

    def validate(self, params: dict[str, Any], input_ref: InputRef | None) -> dict[str, Any]:
        normalised = super().validate(params, input_ref)
        for t in normalised["transcode_types"]:
            if t not in self.profiles:
                raise InvalidParams(
                    f"unknown transcode type {t!r}; known types: {', '.join(self.known_types())}"
                )
        if normalised.get("output_prefix"):
            validate_key(normalised["output_prefix"])
        return normalised

    def known_types(self) -> list[str]:
        """Built-in types in table order, the built-in streaming groups, then user-defined
        ones alphabetically."""
        builtin = [*BUILTIN_PROFILES, *BUILTIN_GROUPS]
        extra = sorted(t for t in self.profiles if t not in builtin)
        return [*builtin, *extra]

    # -- faces -----------------------------------------------------------------------
    def form(self) -> KindForm:
        """The types as cards, the configured defaults ticked."""
        choices = tuple(
            Choice(
                value=name,
                label=f"ttype.{name}",
                text=name,
                hint=f"tdesc.{name}",
                hint_text=self.profiles[name].description,
            )
            for name in self.known_types()
        )
        field = FormField(
            name="transcode_types",
            param="transcode_types",
            widget="cards",
            choices=choices,
            default=tuple(self.config.default_types),
        )
        return KindForm(legend="transcode.types", fields=(field,), hint="transcode.types_hint")

    def describe(self, task: Task) -> list[tuple[str, str]]:
        """The types it asked for."""
        types = task.params.get("transcode_types")
        if not isinstance(types, list):
            return []
        return [(f"ttype.{name}", str(name)) for name in types]

    def gauges(self, recent: Callable[[int], list[Task]]) -> list[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        speed = GaugeMetricFamily(
            "conveyor_transcode_speed_ratio",
            f"Mean ffmpeg encode speed (x realtime) of the last {SPEED_SAMPLE} transcodes",
        )
        value = encode_speed(recent(SPEED_SAMPLE))
        if value is not None:
            speed.add_metric([], value)
        return [speed]

    # -- worker start ----------------------------------------------------------------
    def probe(self) -> dict[str, Any] | None:
        try:
            encoders = detect_encoders(self.ffmpeg, self.encoder_mode)
            subprocess.run([self.ffprobe, "-version"], capture_output=True, check=True, timeout=30)
        except (EncoderUnavailable, OSError, subprocess.SubprocessError) as exc:
            log.warning("transcode unavailable on this host: %s", exc)
            return None
        return {**encoders.capabilities(), "types": self.known_types()}

    # -- one task --------------------------------------------------------------------
    def run(self, ctx: ProcessorContext) -> list[OutputFile]:
        started = time.monotonic()
        params = self._params(ctx)
        if ctx.task.input is None:
            raise InputRejected("a transcode task needs an input video (bucket and key)")
        src_ref = ctx.task.input
        entries = [self.profiles[t] for t in params.transcode_types]
        profiles = [e for e in entries if isinstance(e, Profile)]
        groups = [e for e in entries if isinstance(e, StreamGroup)]
        encoders = detect_encoders(self.ffmpeg, self.encoder_mode)
        # before the download: this host may lack x265
        for codec in {p.codec for p in profiles} | {r.codec for g in groups for r in g.ladder}:
            encoders.for_codec(codec)

        ctx.report_progress(0.0, "download", f"downloading {src_ref.bucket}/{src_ref.key}")
        # a chunk, or the stitch, reads a local store's input in place: a long input is
        # read by every chunk, and copying it each time would cost a chunk's encode
        in_place = params.chunk is not None or bool(params.audio_part) or ctx.task.children > 0
        src = self._download(ctx, src_ref, in_place=in_place)
        _check_cancel(ctx)
        ctx.report_progress(2.0, "probe", "checking the input with ffprobe")
        info = probe_input(self.ffprobe, src)
        ctx.log(
            f"Transcode started: {src_ref.bucket}/{src_ref.key} "
            f"({info.width}x{info.height} {info.video_codec}, {info.duration:.2f} s, "
            f"audio {info.audio_codec or 'none'}) -> {', '.join(params.transcode_types)} "
            f"[h264={encoders.h264} h265={encoders.h265} nvdec={encoders.nvdec}]"
        )
        outdir = ctx.workdir / "out"
        outdir.mkdir(parents=True, exist_ok=True)
        plans = plan_outputs(info, profiles, outdir, self.preview_seconds)
        group_plans = plan_groups(info, groups, outdir, params.segment_seconds)
        for gp in group_plans:
            gp.dir.mkdir(parents=True, exist_ok=True)
            ctx.log(_describe_group_plan(gp, info))
        prefix = params.output_prefix or _default_prefix(src_ref.key)
        # split and stitch (splitting.py): a chunk of a split task, a split task's run
        # after its chunks, or a long task that splits now (ctx.spawn does not return)
        if params.chunk is not None:
            return splitting.run_chunk(
                self, ctx, params, src, info, plans, encoders, started, prefix
            )
        if params.audio_part:
            return splitting.run_audio_part(self, ctx, src, info, plans, started, prefix)
        kids: list[Task] = []
        if ctx.task.children > 0:
            kids = splitting.published_children(ctx)
            result, _frames = splitting.stitch(self, ctx, kids, src, info, plans, started)
            rest = [p for p in plans if p not in splitting.full_length(plans)]
            if rest:
                result, encoders = self._encode(ctx, src, info, rest, [], encoders, started)
            first = min((k.started_at for k in kids if k.started_at), default=None)
            if first is not None:  # the split encode's wall time, chunks to stitch
                result = FFmpegResult(
                    result.returncode, result.stderr_tail, (utcnow() - first).total_seconds()
                )
        else:
            reason = splitting.split_reason(
                params, self.config.split_after, info, plans, group_plans
            )
            chunks = (
                splitting.spawn_chunks(self, ctx, params, src, info, plans, reason)
                if reason
                else []
            )
            if chunks:
                ctx.spawn(chunks)
            result, encoders = self._encode(ctx, src, info, plans, group_plans, encoders, started)
        _check_cancel(ctx)

        ctx.report_progress(94.0, "verify", "checking every output with ffprobe")
        checked, streams = self._verify_all(plans, group_plans, info, result, src)
        speed = info.duration / result.elapsed if result.elapsed else 0.0
        ctx.log(
            f"Transcode completed: {len(plans) + len(group_plans)} output(s) in "
            f"{result.elapsed:.2f} s ({speed:.2f}x realtime)"
        )
        for plan, out in checked:
            ctx.log(f"  {plan.name}: {_describe(plan, out)}")
        for res in streams:
            ctx.log(f"  {res.plan.name}: {_describe_group(res)}")
            for stray in unnamed_files(res):
                ctx.log(f"  {res.plan.name}: {stray.name} is named by no playlist; not published")
        items = _rendition_items(checked, prefix, encoders)
        items += [i for res in streams for i in _group_items(res, prefix, encoders)]
        outputs = self._publish(ctx, items)
        for o in outputs:  # feeds conveyor_transcode_speed_ratio on /metrics
            if o.meta.get("role") in (None, "master", "manifest"):
                o.meta["encode_speed"] = round(speed, 3)
            if kids and o.meta.get("duration") is not None:
                o.meta["chunks"] = sum(1 for k in kids if k.params.get("chunk"))
        if kids:
            removed = splitting.remove_chunks(ctx, kids)
            ctx.log(f"Chunk files removed: {removed} (the stitched outputs are staged)")
        total = sum(o.size for o in outputs)
        ctx.log(
            f"Upload completed: {len(outputs)} file(s), {total} bytes to "
            f"{ctx.output_bucket}/{prefix}/"
        )
        ctx.report_progress(100.0, "upload", f"{len(outputs)} output(s) published")
        return outputs

    def _params(self, ctx: ProcessorContext) -> TranscodeParams:
        """Re-check at run time: the profile table may differ on this worker."""
        try:
            params = TranscodeParams.model_validate(ctx.task.params)
        except ValueError as exc:
            raise ProcessorError(
                f"invalid transcode parameters: {exc}", retryable=False, code="invalid_params"
            ) from exc
        unknown = [t for t in params.transcode_types if t not in self.profiles]
        if unknown:
            raise ProcessorError(
                f"unknown transcode type {unknown[0]!r} on this worker; known types: "
                f"{', '.join(self.known_types())}",
                retryable=False,
                code="invalid_params",
            )
        return params

    def _download(self, ctx: ProcessorContext, ref: InputRef, *, in_place: bool = False) -> Path:
        if in_place:
            local = ctx.storage.local_path(ref.bucket, ref.key)
            if local is not None and local.is_file():
                return local
        suffix = PurePosixPath(ref.key).suffix
        dest = ctx.workdir / f"input{suffix if _SAFE_SUFFIX.match(suffix) else ''}"
        return download_input(ctx, ref, dest)

    def _encode(
        self,
        ctx: ProcessorContext,
        src: Path,
        info: MediaInfo,
        plans: list[OutputPlan],
        groups: list[GroupPlan],
        encoders: Encoders,
        started: float,
    ) -> tuple[FFmpegResult, Encoders]:
        """Encode; a GPU failure gets one more try on the CPU, an input failure none.

        Returns the result and the encoders that produced it.
        """
        try:
            return self._encode_once(ctx, src, info, plans, groups, encoders, started), encoders
        except FFmpegFailed as exc:
            if encoders.uses_gpu and gpu_failure(exc.tail):
                ctx.log(
                    f"GPU encode failed ({tidy_lines(exc.tail, str(src))}); "
                    "retrying on the CPU encoders"
                )
                cpu = encoders.cpu_only()
                try:
                    return self._encode_once(ctx, src, info, plans, groups, cpu, started), cpu
                except FFmpegFailed as again:
                    exc = again
            if blames_input(exc.tail):
                detail = tidy_lines(exc.tail, str(src))
                raise InputRejected(f"input video is damaged or truncated: {detail}") from exc
            raise exc from None

    def _encode_once(
        self,
        ctx: ProcessorContext,
        src: Path,
        info: MediaInfo,
        plans: list[OutputPlan],
        groups: list[GroupPlan],
        encoders: Encoders,
        started: float,
    ) -> FFmpegResult:
        argv = build_command(self.ffmpeg, src, info, plans, encoders, groups)
        throttle = Throttle(0.5)
        what = _what(plans, groups)

        def progress(pct: float, speed: float | None) -> None:
            if throttle.ready(force=pct >= 100):
                msg = f"encoding {what}" + (f" at {speed:g}x" if speed else "")
                ctx.report_progress(3.0 + 0.9 * pct, "transcode", msg)

        timeout = None
        if ctx.timeout_s:
            timeout = max(1.0, ctx.timeout_s - (time.monotonic() - started))
        env = None
        if ctx.gpus and encoders.uses_gpu:
            env = {"CUDA_VISIBLE_DEVICES": ",".join(ctx.gpus)}
        ctx.report_progress(3.0, "transcode", f"encoding {what}")
        return run_ffmpeg(
            argv,
            duration=info.duration,
            cancel_event=ctx.cancel_event,
            timeout_s=timeout,
            on_progress=progress,
            env=env,
        )

    def _verify_all(
        self,
        plans: list[OutputPlan],
        groups: list[GroupPlan],
        info: MediaInfo,
        result: FFmpegResult,
        src: Path,
    ) -> tuple[list[tuple[OutputPlan, OutputInfo]], list[GroupResult]]:
        """Every output and group checked; a short one is blamed on the input, with
        ffmpeg's hint."""
        try:
            # ffprobe start-up dominates a check, so the checks run side by side
            with ThreadPoolExecutor(max_workers=8) as pool:
                found = list(pool.map(lambda p: self._verify(p, info), plans))

                def side_by_side(*calls: Callable[[], Any]) -> list[Any]:
                    return list(pool.map(lambda call: call(), calls))

                streams = [verify_group(self.ffprobe, g, side_by_side) for g in groups]
        except InputRejected as exc:
            hint = tidy_lines(result.stderr_tail, str(src))
            raise InputRejected(f"{exc.message} (ffmpeg: {hint})" if hint else exc.message) from exc
        return list(zip(plans, found, strict=True)), streams

    def _verify(self, plan: OutputPlan, info: MediaInfo) -> OutputInfo:
        return verify_output(
            self.ffprobe,
            plan.path,
            plan.profile,
            width=plan.width,
            height=plan.height,
            expect_audio=plan.audio,
            expected_duration=plan.duration,
            input_duration=info.duration,
        )

    def _publish(self, ctx: ProcessorContext, items: list[_Item]) -> list[OutputFile]:
        """Stage all outputs or none, several at a time: a failure or cancel part-way waits
        for the puts under way and removes everything staged.  Outputs in ``items`` order."""
        staged: list[OutputFile] = []
        if not items:
            return staged
        results: list[OutputFile | None] = [None] * len(items)
        throttle = Throttle(0.5)
        with publishing(ctx, staged):
            _check_cancel(ctx)
            pool = ThreadPoolExecutor(min(STAGE_THREADS, len(items)), "transcode-stage")
            futures: dict[Future[OutputFile], int] = {}
            try:
                for i, it in enumerate(items):
                    put = pool.submit(
                        ctx.stager.put_file, it.name, it.key, it.path, it.content_type, it.meta
                    )
                    futures[put] = i
                for done, put in enumerate(as_completed(futures), start=1):
                    results[futures[put]] = put.result()
                    _check_cancel(ctx)
                    if throttle.ready(force=done == len(items)):
                        ctx.report_progress(
                            95.0 + 4.9 * done / len(items),
                            "upload",
                            f"uploaded {done} of {len(items)} file(s)",
                        )
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
                for put, i in futures.items():  # what finished after a failure: removed too
                    finished = put.done() and not put.cancelled()
                    if results[i] is None and finished and put.exception() is None:
                        results[i] = put.result()
                staged.extend(r for r in results if r is not None)
        return staged


def encode_speed(tasks: Iterable[Task]) -> float | None:
    """Mean encode speed (x realtime) recorded on the outputs of ``tasks`` (``run`` puts
    it in each output's ``encode_speed``)."""
    speeds = []
    for t in tasks:
        for o in t.outputs:
            v = o.meta.get("encode_speed")
            if isinstance(v, int | float) and v > 0:
                speeds.append(float(v))
                break
    return sum(speeds) / len(speeds) if speeds else None


@dataclass(frozen=True)
class _Item:
    """One file to stage: the output's name, its final key, the local file, how it is
    served and what the task's record says about it."""

    name: str
    key: str
    path: Path
    content_type: str | None
    meta: dict[str, Any]


def _rendition_items(
    checked: list[tuple[OutputPlan, OutputInfo]], prefix: str, encoders: Encoders
) -> list[_Item]:
    items = []
    for plan, out in checked:
        p = plan.profile
        meta: dict[str, Any] = {
            "width": out.width,
            "height": out.height,
            "codec": out.codec,
            "encoder": encoders.for_codec(p.codec),
            "audio": out.audio_codec,
        }
        if not p.is_still:
            meta["duration"] = out.duration
        key = validate_key(f"{prefix}/{p.name}.{p.ext}")
        items.append(_Item(plan.name, key, plan.path, p.content_type, meta))
    return items


def _group_items(res: GroupResult, prefix: str, encoders: Encoders) -> list[_Item]:
    """A group's files under ``<prefix>/<group>/``: the entry points carry the group's
    summary, variant playlists their rendition, segments only where they belong (a
    long video has thousands; the task's record stays small)."""
    group = res.plan.name
    summary = res.meta()
    summary["encoders"] = sorted({encoders.for_codec(r.rung.codec) for r in res.plan.rungs})
    facts = {r.playlist: r for r in res.renditions if r.playlist}
    items = []
    for f in res.files:
        meta: dict[str, Any] = {"group": group, "role": f.role}
        if f.role in ("master", "manifest"):
            meta = {**summary, "role": f.role}
        elif f.rendition is not None:
            meta["rendition"] = f.rendition
        r = facts.get(f.rel) if f.role == "playlist" else None
        if r is not None:
            meta["codec"] = r.codec
            if r.width:
                meta["width"], meta["height"] = r.width, r.height
        key = validate_key(f"{prefix}/{group}/{f.rel}")
        items.append(_Item(f"{group}/{f.rel}", key, f.path, f.content_type, meta))
    return items


def _what(plans: list[OutputPlan], groups: list[GroupPlan]) -> str:
    text = f"{len(plans)} output(s)"
    if groups:
        rungs = sum(len(g.rungs) for g in groups)
        text += f" and {len(groups)} streaming group(s) of {rungs} rung(s)"
    return text if plans else text.split(" and ", 1)[-1]


def _describe_group_plan(plan: GroupPlan, info: MediaInfo) -> str:
    rungs = ", ".join(f"{r.name} {r.width}x{r.height}" for r in plan.rungs)
    text = f"Streaming group {plan.name} ({plan.group.kind}, {plan.group.segments}): {rungs}"
    text += " + AAC audio" if plan.audio else ", no audio"
    if plan.dropped:
        text += (
            f"; dropped {', '.join(plan.dropped)} (above the input's {info.width}x{info.height})"
        )
    return text + (
        f"; {plan.segment_seconds:g} s segments, keyframe every {plan.gop} frames on every rung"
    )


def _describe_group(res: GroupResult) -> str:
    return (
        f"{', '.join(e.name for e in res.plan.entry_points)} + "
        f"{len(res.renditions)} rendition(s), {len(res.files)} file(s), {res.size} bytes, "
        f"{res.duration:.2f} s, longest segment {res.longest_segment:.3f} s"
    )


def _describe(plan: OutputPlan, out: OutputInfo) -> str:
    parts = [f"{out.width}x{out.height} {out.codec}"]
    if out.audio_codec:
        parts[0] += f" + {out.audio_codec}"
    if out.duration and not plan.profile.is_still:
        parts.append(f"{out.duration:.2f} s")
    parts.append(f"{out.size} bytes")
    return ", ".join(parts)


def _default_prefix(key: str) -> str:
    """``clips/hd.mp4`` -> ``clips/hd``: each input gets a folder of renditions."""
    path = PurePosixPath(key)
    return str(path.with_suffix("")) if path.suffix else str(path)


def _check_cancel(ctx: ProcessorContext) -> None:
    if ctx.cancel_event.is_set():
        raise TaskCancelled("cancelled")


__all__ = ["Profile", "TranscodeParams", "TranscodeProcessor", "TranscodeSettings"]
