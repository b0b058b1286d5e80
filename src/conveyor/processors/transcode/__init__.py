"""The ``transcode`` kind: one input video, any of the table's renditions, one ffmpeg.

The order of ``run`` is the point: reject a bad input before encoding,
encode everything in one pass, check every output, and only then publish —
so a task either completes with all its renditions or publishes nothing.
"""

from __future__ import annotations

import logging
import re
import subprocess
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, ClassVar, cast, get_args

from conveyor.errors import (
    InputRejected,
    InvalidParams,
    InvalidRequest,
    ProcessorError,
    TaskCancelled,
)
from conveyor.models import InputRef, OutputFile, Task
from conveyor.processors.base import (
    Choice,
    FormField,
    KindForm,
    Processor,
    ProcessorContext,
    download_input,
    publishing,
)
from conveyor.processors.transcode.command import OutputPlan, build_command, plan_outputs
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
    SEED_PROFILES,
    Profile,
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
from conveyor.storage.base import validate_key

from .labels import LABELS

if TYPE_CHECKING:
    from prometheus_client.core import Metric

log = logging.getLogger(__name__)

DEFAULT_PREVIEW_SECONDS = 10.0
SPEED_SAMPLE = 20  # recent completed tasks averaged into conveyor_transcode_speed_ratio
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
        self.profiles: dict[str, Profile] = build_profile_table(self.config.profiles or {})

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
        """Seed types in table order, then user-defined ones alphabetically."""
        extra = sorted(t for t in self.profiles if t not in SEED_PROFILES)
        return [*SEED_PROFILES, *extra]

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
        profiles = [self.profiles[t] for t in params.transcode_types]
        encoders = detect_encoders(self.ffmpeg, self.encoder_mode)
        for p in profiles:
            encoders.for_codec(p.codec)  # before the download: this host may lack x265

        ctx.report_progress(0.0, "download", f"downloading {src_ref.bucket}/{src_ref.key}")
        src = self._download(ctx, src_ref)
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
        result, encoders = self._encode(ctx, src, info, plans, encoders, started)
        _check_cancel(ctx)

        ctx.report_progress(94.0, "verify", "checking every output with ffprobe")
        checked = self._verify_all(plans, info, result, src)
        speed = info.duration / result.elapsed if result.elapsed else 0.0
        ctx.log(
            f"Transcode completed: {len(plans)} output(s) in {result.elapsed:.2f} s "
            f"({speed:.2f}x realtime)"
        )
        for plan, out in checked:
            ctx.log(f"  {plan.name}: {_describe(plan, out)}")
        prefix = params.output_prefix or _default_prefix(src_ref.key)
        outputs = self._publish(ctx, checked, prefix, encoders)
        for o in outputs:  # feeds conveyor_transcode_speed_ratio on /metrics
            o.meta["encode_speed"] = round(speed, 3)
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

    def _download(self, ctx: ProcessorContext, ref: InputRef) -> Path:
        suffix = PurePosixPath(ref.key).suffix
        dest = ctx.workdir / f"input{suffix if _SAFE_SUFFIX.match(suffix) else ''}"
        return download_input(ctx, ref, dest)

    def _encode(
        self,
        ctx: ProcessorContext,
        src: Path,
        info: MediaInfo,
        plans: list[OutputPlan],
        encoders: Encoders,
        started: float,
    ) -> tuple[FFmpegResult, Encoders]:
        """Encode; a GPU failure gets one more try on the CPU, an input failure none.

        Returns the result and the encoders that produced it.
        """
        try:
            return self._encode_once(ctx, src, info, plans, encoders, started), encoders
        except FFmpegFailed as exc:
            if encoders.uses_gpu and gpu_failure(exc.tail):
                ctx.log(
                    f"GPU encode failed ({tidy_lines(exc.tail, str(src))}); "
                    "retrying on the CPU encoders"
                )
                cpu = encoders.cpu_only()
                try:
                    return self._encode_once(ctx, src, info, plans, cpu, started), cpu
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
        encoders: Encoders,
        started: float,
    ) -> FFmpegResult:
        argv = build_command(self.ffmpeg, src, info, plans, encoders)
        throttle = Throttle(0.5)

        def progress(pct: float, speed: float | None) -> None:
            if throttle.ready(force=pct >= 100):
                msg = f"encoding {len(plans)} output(s)" + (f" at {speed:g}x" if speed else "")
                ctx.report_progress(3.0 + 0.9 * pct, "transcode", msg)

        timeout = None
        if ctx.timeout_s:
            timeout = max(1.0, ctx.timeout_s - (time.monotonic() - started))
        env = None
        if ctx.gpus and encoders.uses_gpu:
            env = {"CUDA_VISIBLE_DEVICES": ",".join(ctx.gpus)}
        ctx.report_progress(3.0, "transcode", f"encoding {len(plans)} output(s)")
        return run_ffmpeg(
            argv,
            duration=info.duration,
            cancel_event=ctx.cancel_event,
            timeout_s=timeout,
            on_progress=progress,
            env=env,
        )

    def _verify_all(
        self, plans: list[OutputPlan], info: MediaInfo, result: FFmpegResult, src: Path
    ) -> list[tuple[OutputPlan, OutputInfo]]:
        """Every output checked; a short output is blamed on the input, with ffmpeg's hint."""
        try:
            # ffprobe start-up dominates a check, so the checks run side by side
            with ThreadPoolExecutor(max_workers=min(8, len(plans))) as pool:
                found = list(pool.map(lambda p: self._verify(p, info), plans))
        except InputRejected as exc:
            hint = tidy_lines(result.stderr_tail, str(src))
            raise InputRejected(f"{exc.message} (ffmpeg: {hint})" if hint else exc.message) from exc
        return list(zip(plans, found, strict=True))

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

    def _publish(
        self,
        ctx: ProcessorContext,
        checked: list[tuple[OutputPlan, OutputInfo]],
        prefix: str,
        encoders: Encoders,
    ) -> list[OutputFile]:
        """Stage all outputs or none: a failure or cancel part-way removes what was staged."""
        published: list[OutputFile] = []
        with publishing(ctx, published):
            for i, (plan, out) in enumerate(checked):
                _check_cancel(ctx)
                p = plan.profile
                key = validate_key(f"{prefix}/{p.name}.{p.ext}")
                ctx.report_progress(
                    95.0 + 5.0 * i / len(checked), "upload", f"uploading {plan.name}"
                )
                meta: dict[str, Any] = {
                    "width": out.width,
                    "height": out.height,
                    "codec": out.codec,
                    "encoder": encoders.for_codec(p.codec),
                    "audio": out.audio_codec,
                }
                if not p.is_still:
                    meta["duration"] = out.duration
                published.append(
                    ctx.stager.put_file(plan.name, key, plan.path, p.content_type, meta)
                )
        return published


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
