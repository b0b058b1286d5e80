"""Pick the encoders this host can really use, by trying them once.

``ffmpeg -encoders`` lists what ffmpeg was *built* with: Debian's ffmpeg
lists ``h264_nvenc`` on machines with no GPU, and an H100 has NVDEC but no
NVENC.  So each candidate encodes one frame at worker start and only what
works is used.  The answer cannot change while the worker runs, so it is
cached per ffmpeg binary and mode.
"""

from __future__ import annotations

import functools
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from conveyor.errors import ProcessorError
from conveyor.processors.transcode.profiles import Codec

EncoderMode = Literal["auto", "cpu", "nvenc"]
TEST_TIMEOUT_S = 30.0
_QUIET = ("-hide_banner", "-loglevel", "error", "-nostdin")

_CPU = {"h264": "libx264", "h265": "libx265", "jpeg": "mjpeg"}
_NVENC = {"h264": "h264_nvenc", "h265": "hevc_nvenc"}
# Input codecs NVDEC decodes; anything else is decoded on the CPU.
NVDEC_CODECS = frozenset(
    ("h264", "hevc", "av1", "vp8", "vp9", "mpeg1video", "mpeg2video", "mpeg4", "vc1", "mjpeg")
)


# ffmpeg error text that points at the GPU rather than the input: session limits
# (consumer cards allow a handful of NVENC sessions), driver or memory trouble.
_GPU_ERROR_MARKERS = (
    "nvenc",
    "openencodesession",
    "cuda",
    "cuvid",
    "nvdec",
    "hwaccel",
    "no capable devices",
)


def gpu_failure(stderr_lines: list[str]) -> bool:
    text = "\n".join(stderr_lines).lower()
    return any(marker in text for marker in _GPU_ERROR_MARKERS)


class EncoderUnavailable(ProcessorError):
    """The host's ffmpeg cannot do what the configuration asks for."""

    code = "encoder_unavailable"


@dataclass(frozen=True)
class Encoders:
    """The encoder chosen per codec family (None: this ffmpeg cannot make it)."""

    h264: str | None
    h265: str | None
    jpeg: str | None
    nvdec: bool
    ffmpeg_version: str

    def for_codec(self, codec: Codec) -> str:
        name: str | None = getattr(self, codec)
        if name is None:
            raise EncoderUnavailable(
                f"this worker's ffmpeg has no working {codec} encoder", retryable=True
            )
        return name

    def cpu_only(self) -> Encoders:
        """The same choice without the GPU: the fallback when NVENC/NVDEC fail mid-task."""
        return replace(
            self,
            h264=_CPU["h264"] if self.h264 == _NVENC["h264"] else self.h264,
            h265=_CPU["h265"] if self.h265 == _NVENC["h265"] else self.h265,
            nvdec=False,
        )

    @property
    def uses_gpu(self) -> bool:
        return self.nvenc or self.nvdec

    @property
    def nvenc(self) -> bool:
        return any(e is not None and e.endswith("_nvenc") for e in (self.h264, self.h265))

    def capabilities(self) -> dict[str, Any]:
        return {**asdict(self), "nvenc": self.nvenc}


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=TEST_TIMEOUT_S, check=False)


# libnuma (linked by x265) complains on every encode where the seccomp profile
# forbids NUMA memory policies, as Docker's default profile does; the encode
# itself works, so these lines must not disqualify the encoder.
_BENIGN_STDERR = re.compile(r"^[gs]et_mempolicy: Operation not permitted$")


def _works(argv: list[str]) -> bool:
    """True when ffmpeg exits 0 *and* says nothing at error level (no silent fallback)."""
    try:
        proc = _run(argv)
    except (OSError, subprocess.TimeoutExpired):
        return False
    noise = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    return proc.returncode == 0 and all(_BENIGN_STDERR.match(ln.strip()) for ln in noise)


def _one_frame(ffmpeg: str, encoder: str) -> list[str]:
    pix_fmt = "yuvj420p" if encoder == "mjpeg" else "yuv420p"
    argv = [ffmpeg, *_QUIET, "-f", "lavfi", "-i", "color=c=gray:s=256x256:r=25", "-frames:v", "1"]
    argv += ["-pix_fmt", pix_fmt, "-c:v", encoder]
    if encoder == "libx265":
        argv += ["-x265-params", "log-level=error"]
    return [*argv, "-f", "null", "-"]


def encoder_works(ffmpeg: str, encoder: str) -> bool:
    return _works(_one_frame(ffmpeg, encoder))


def nvdec_works(ffmpeg: str, h264_encoder: str) -> bool:
    """Decode a tiny generated H.264 clip through ``-hwaccel cuda``."""
    with tempfile.TemporaryDirectory(prefix="conveyor-nvdec-") as tmp:
        clip = Path(tmp) / "probe.mp4"
        source = ["-f", "lavfi", "-i", "testsrc2=s=256x144:r=25:d=0.2", "-pix_fmt", "yuv420p"]
        if not _works([ffmpeg, *_QUIET, *source, "-c:v", h264_encoder, str(clip)]):
            return False
        return _works([ffmpeg, *_QUIET, "-hwaccel", "cuda", "-i", str(clip), "-f", "null", "-"])


def ffmpeg_version(ffmpeg: str) -> str:
    try:
        proc = _run([ffmpeg, "-hide_banner", "-version"])
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EncoderUnavailable(f"ffmpeg not usable at {ffmpeg!r}: {exc}", retryable=True) from exc
    first = (proc.stdout.splitlines() or [""])[0]
    if proc.returncode != 0 or not first.startswith("ffmpeg version"):
        raise EncoderUnavailable(f"{ffmpeg!r} does not look like ffmpeg", retryable=True)
    return first.split()[2]


@functools.cache
def detect_encoders(ffmpeg: str = "ffmpeg", mode: EncoderMode = "auto") -> Encoders:
    """Choose encoders for this host; ``nvenc`` mode fails loudly instead of falling back."""
    version = ffmpeg_version(ffmpeg)
    chosen: dict[str, str | None] = {}
    for codec in ("h264", "h265"):
        nv = _NVENC[codec]
        if mode != "cpu" and encoder_works(ffmpeg, nv):
            chosen[codec] = nv
        elif mode == "nvenc":
            raise EncoderUnavailable(
                f"encoder=nvenc is configured but {nv} cannot encode on this host "
                "(no NVIDIA GPU with an encoder, or no driver)",
                retryable=True,
            )
        else:
            chosen[codec] = _CPU[codec] if encoder_works(ffmpeg, _CPU[codec]) else None
    chosen["jpeg"] = "mjpeg" if encoder_works(ffmpeg, "mjpeg") else None
    h264 = chosen["h264"]
    nvdec = mode != "cpu" and h264 is not None and nvdec_works(ffmpeg, h264)
    return Encoders(
        h264=chosen["h264"],
        h265=chosen["h265"],
        jpeg=chosen["jpeg"],
        nvdec=nvdec,
        ffmpeg_version=version,
    )
