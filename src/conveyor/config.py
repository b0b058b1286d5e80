"""Settings from env vars (``CONVEYOR_*`` plus seed 002's names) and config.yaml.

``config.yaml`` may hold ``default``, ``development`` and ``production``
sections (seed 000); ``CONVEYOR_ENV`` picks the section that overrides
``default``.  Environment variables override the file.  Secrets never live
here: they come from the environment or the standard credential chains.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import yaml
from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ALL_TRANSCODE_TYPES = [
    "mp4_standard",
    "mp4_smooth",
    "hdlbr_h265",
    "lcd_h265",
    "h265_mute",
    "custom_mute_preview",
    "thumbnail",
]
DEFAULT_TRANSCODE_TYPES = ["mp4_standard", "mp4_smooth", "thumbnail"]

# The local container runner is not a sandbox: a worker whose operator turns it on
# while auth is on must also set CONVEYOR_CONTAINER_LOCAL_UNSANDBOXED to this.
LOCAL_RUNNER_RISK = "i-understand-submitters-run-commands-on-this-host"
LOCAL_RUNNER_REFUSAL = (
    "CONVEYOR_CONTAINER_RUNNER=local runs every submitter's command as a plain process "
    "on this host, with no sandbox, and auth is on here (CONVEYOR_AUTH=on, or a worker "
    "that joins an API). Refused unless the operator also sets "
    f"CONVEYOR_CONTAINER_LOCAL_UNSANDBOXED={LOCAL_RUNNER_RISK} "
    "(see docs/container.md); use CONVEYOR_CONTAINER_RUNNER=docker for a sandbox."
)


def local_runner_guarded(settings: Any) -> bool:
    """Whether others may submit to this process's worker: auth is on, or it is a
    worker that talks to an API (which it joined with a credential)."""
    backend = str(getattr(settings, "backend_url", "") or "")
    return bool(getattr(settings, "auth", False)) or backend.startswith(("http://", "https://"))


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(value: Any) -> float:
    """Accept seconds as a number or Go-style strings such as ``10s``, ``500ms``, ``2m``."""
    if isinstance(value, int | float):
        return float(value)
    m = _DURATION_RE.match(str(value))
    if not m:
        raise ValueError(f"invalid duration {value!r}: use seconds or e.g. 10s, 500ms, 2m, 30d")
    n, unit = float(m.group(1)), m.group(2) or "s"
    return n * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}[unit]


def _env(default: Any, name: str, *seed_names: str, **kw: Any) -> Any:
    """A field read from ``CONVEYOR_<NAME>`` or any of seed 002's names."""
    alias = AliasChoices(f"CONVEYOR_{name}", *seed_names)
    if callable(default):
        return Field(default_factory=default, validation_alias=alias, **kw)
    return Field(default, validation_alias=alias, **kw)


class YamlSource(PydanticBaseSettingsSource):
    """Reads the selected environment section of config.yaml over ``default``."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        path = Path(os.environ.get("CONVEYOR_CONFIG", "config.yaml"))
        self.data: dict[str, Any] = {}
        if path.is_file():
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            if not isinstance(raw, dict):
                raise ValueError(f"{path}: expected a mapping of environments")
            env = os.environ.get("CONVEYOR_ENV", "default")
            sections = {"default", "development", "production"}
            if sections & raw.keys():
                self.data = {**(raw.get("default") or {}), **(raw.get(env) or {})}
            else:
                self.data = raw

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self.data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        fields = self.settings_cls.model_fields
        return {k: v for k, v in self.data.items() if k in fields}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    data_dir: Path = _env(Path("data"), "DATA_DIR")
    backend_url: str = _env("", "BACKEND_URL")
    storage_url: str = _env("", "STORAGE_URL")
    input_bucket: str = _env("input", "INPUT_BUCKET", "INPUT_BUCKET")
    output_bucket: str = _env("output", "OUTPUT_BUCKET", "OUTPUT_BUCKET")
    temp_dir: Path | None = _env(None, "TEMP_DIR", "TEMP_DIR")
    max_concurrent_tasks: int = _env(
        2, "MAX_CONCURRENT_TASKS", "MAX_CONCURRENT_TASKS", ge=1, le=256
    )
    poll_interval: float = _env(1.0, "POLL_INTERVAL", "POLL_INTERVAL")
    api_host: str = _env("127.0.0.1", "API_HOST", "API_HOST")
    api_port: int = _env(9999, "API_PORT", "API_PORT")
    log_level: str = _env("INFO", "LOG_LEVEL", "LOG_LEVEL")
    log_format: str = _env("auto", "LOG_FORMAT", "LOG_FORMAT")

    lease_seconds: float = _env(30.0, "LEASE_SECONDS")
    heartbeat_interval: float = _env(2.0, "HEARTBEAT_INTERVAL")
    reap_interval: float = _env(5.0, "REAP_INTERVAL")
    task_timeout: float = _env(6 * 3600.0, "TASK_TIMEOUT")
    shutdown_grace: float = _env(30.0, "SHUTDOWN_GRACE")
    max_attempts: int = _env(3, "MAX_ATTEMPTS", ge=1, le=100)
    retry_backoff_base: float = _env(5.0, "RETRY_BACKOFF_BASE")
    max_upload_bytes: int = _env(20 * 1024**3, "MAX_UPLOAD_BYTES")

    default_transcode_types: Annotated[list[str], NoDecode] = _env(
        lambda: list(DEFAULT_TRANSCODE_TYPES), "DEFAULT_TRANSCODE_TYPES", "DEFAULT_TRANSCODE_TYPES"
    )
    transcode_profiles: dict[str, dict[str, Any]] = _env(dict, "TRANSCODE_PROFILES")
    preview_seconds: float = _env(10.0, "PREVIEW_SECONDS")
    ffmpeg: str = _env("ffmpeg", "FFMPEG")
    ffprobe: str = _env("ffprobe", "FFPROBE")
    encoder: str = _env("auto", "ENCODER")
    # docparse: page processes per task (0 = one per CPU core) and an optional
    # mineru-api server (seed 000's GPU parser) the mineru engine sends work to
    docparse_workers: int = _env(0, "DOCPARSE_WORKERS", ge=0, le=256)
    mineru_api_url: str = _env("", "MINERU_API_URL", "MINERU_API_URL")
    # docparse limits on input (docs/docparse.md): pixels a page or image frame may
    # take (big pages are rendered for OCR at down to min_dpi), pixels a document may
    # take, and each page process's address space (MiB, 0 = none) and time per page
    docparse_max_page_pixels: int = _env(36_000_000, "DOCPARSE_MAX_PAGE_PIXELS", ge=1_000_000)
    docparse_min_dpi: int = _env(150, "DOCPARSE_MIN_DPI", ge=36, le=200)
    docparse_max_document_pixels: int = _env(
        20_000_000_000, "DOCPARSE_MAX_DOCUMENT_PIXELS", ge=1_000_000
    )
    docparse_page_memory_mb: int = _env(1536, "DOCPARSE_PAGE_MEMORY_MB", ge=0)
    docparse_page_timeout: float = _env(600.0, "DOCPARSE_PAGE_TIMEOUT", gt=0, le=86400)

    trigger_enabled: bool = _env(True, "TRIGGER_ENABLED")
    trigger_interval: float = _env(2.0, "TRIGGER_INTERVAL")
    trigger_settle_seconds: float = _env(2.0, "TRIGGER_SETTLE_SECONDS")
    # seed 000/002 AWS names: together they choose the aws backend and s3 storage
    aws_region: str = _env("", "AWS_REGION", "AWS_REGION", "AWS_DEFAULT_REGION")
    sqs_queue_url: str = _env("", "SQS_QUEUE_URL", "SQS_QUEUE_URL")
    dynamodb_table: str = _env("", "DYNAMODB_TABLE", "DYNAMODB_TABLE")
    # S3 -> SQS upload notifications; when set, the upload trigger reads them
    # instead of listing the input bucket
    s3_events_queue_url: str = _env("", "S3_EVENTS_QUEUE_URL", "S3_EVENTS_QUEUE_URL")

    # container tasks (docs/container.md)
    container_runner: str = _env("auto", "CONTAINER_RUNNER")  # auto | docker | local | off
    docker_host: str = _env("", "DOCKER_HOST", "DOCKER_HOST")
    container_network: str = _env("", "CONTAINER_NETWORK")  # "" = the engine's default
    container_grace: float = _env(10.0, "CONTAINER_GRACE")
    container_reap_interval: float = _env(300.0, "CONTAINER_REAP_INTERVAL")
    container_sync_interval: float = _env(30.0, "CONTAINER_SYNC_INTERVAL")  # 0: after only
    # the container sandbox (docs/container.md "Runners" and "The Docker sandbox"):
    # the uid:gid Docker jobs run as, their process limit, the caps on what one attempt
    # may leave in its output folder, registries allowed although they are loopback or
    # link-local; the local runner's uid[:gid] or user name ("" = the worker's own) and
    # the flag without which it is refused while auth is on (LOCAL_RUNNER_RISK)
    container_user: str = _env("65534:65534", "CONTAINER_USER")
    container_pids_limit: int = _env(512, "CONTAINER_PIDS_LIMIT", ge=16, le=4_194_304)
    container_max_output_bytes: int = _env(10 * 1024**3, "CONTAINER_MAX_OUTPUT_BYTES", ge=1)
    container_max_output_files: int = _env(100_000, "CONTAINER_MAX_OUTPUT_FILES", ge=1)
    container_local_registries: Annotated[list[str], NoDecode] = _env(
        list, "CONTAINER_LOCAL_REGISTRIES"
    )
    container_local_user: str = _env("", "CONTAINER_LOCAL_USER")
    container_local_unsandboxed: str = _env("", "CONTAINER_LOCAL_UNSANDBOXED")
    gpus: str = _env("auto", "GPUS")  # auto (nvidia-smi) | none | 0,1,2,3
    # seed 003's POST /train runs this image and command with the body as arguments
    train_image: str = _env("conveyor/train-mlp:latest", "TRAIN_IMAGE")
    train_command: Annotated[list[str], NoDecode] = _env(
        lambda: ["python", "/app/train.py"], "TRAIN_COMMAND"
    )
    train_gpus: int = _env(0, "TRAIN_GPUS", ge=0, le=64)

    # security (docs/security.md): off by default for the embedded, loopback-only `conveyor up`
    auth: bool = _env(False, "AUTH")
    worker_credential_ttl: float = _env(30 * 86400.0, "WORKER_CREDENTIAL_TTL")
    enrollment_ttl: float = _env(300.0, "ENROLLMENT_TTL")
    session_ttl: float = _env(12 * 3600.0, "SESSION_TTL")
    max_request_bytes: int = _env(1024 * 1024, "MAX_REQUEST_BYTES", ge=1024)  # JSON and forms
    max_json_depth: int = _env(32, "MAX_JSON_DEPTH", ge=2, le=1000)
    auth_rate_limit: int = _env(20, "AUTH_RATE_LIMIT", ge=1)  # login/enroll tries per IP a minute

    def model_post_init(self, __context: Any) -> None:
        self.data_dir = self.data_dir.resolve()
        aws = bool(self.sqs_queue_url and self.dynamodb_table)
        if not self.backend_url and aws:
            if not self.aws_region:
                raise ValueError("SQS_QUEUE_URL and DYNAMODB_TABLE are set but AWS_REGION is not")
            query = urlencode(
                {
                    "queue_url": self.sqs_queue_url,
                    "table": self.dynamodb_table,
                    "region": self.aws_region,
                }
            )
            self.backend_url = f"aws://?{query}"
        if not self.backend_url:
            self.backend_url = f"sqlite:///{self.data_dir / 'conveyor.db'}"
        if not self.storage_url:
            self.storage_url = "s3://" if aws else f"file://{self.data_dir / 'buckets'}"
        if self.temp_dir is None:
            self.temp_dir = self.data_dir / "tmp"

    @field_validator(
        "poll_interval",
        "lease_seconds",
        "heartbeat_interval",
        "reap_interval",
        "task_timeout",
        "shutdown_grace",
        "retry_backoff_base",
        "trigger_interval",
        "trigger_settle_seconds",
        "preview_seconds",
        "worker_credential_ttl",
        "enrollment_ttl",
        "session_ttl",
        mode="before",
    )
    @classmethod
    def _durations(cls, v: Any) -> float:
        return parse_duration(v)

    @field_validator("default_transcode_types", mode="before")
    @classmethod
    def _csv(cls, v: Any) -> Any:
        if isinstance(v, str):
            if v.strip().startswith("["):
                return json.loads(v)
            return [t.strip() for t in v.split(",") if t.strip()]
        return v

    @field_validator(
        "container_grace", "container_reap_interval", "container_sync_interval", mode="before"
    )
    @classmethod
    def _container_durations(cls, v: Any) -> float:
        return parse_duration(v)

    @field_validator("container_runner")
    @classmethod
    def _container_runner(cls, v: str) -> str:
        if v not in ("auto", "docker", "local", "off"):
            raise ValueError("container_runner must be auto, docker, local or off")
        return v

    @field_validator("container_user")
    @classmethod
    def _container_user(cls, v: str) -> str:
        if not re.fullmatch(r"\d{1,10}(:\d{1,10})?", v.strip()):
            raise ValueError("container_user must be a numeric uid or uid:gid, e.g. 65534:65534")
        return v.strip()

    @field_validator("container_local_registries", mode="before")
    @classmethod
    def _registries(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [r.strip().lower() for r in v.split(",") if r.strip()]
        return v

    @model_validator(mode="after")
    def _local_runner_risk(self) -> Settings:
        """The local runner runs submitters' commands on this host: where others may
        submit (auth on, or a worker joined to an API) its operator must say so."""
        if (
            self.container_runner == "local"
            and local_runner_guarded(self)
            and self.container_local_unsandboxed != LOCAL_RUNNER_RISK
        ):
            raise ValueError(LOCAL_RUNNER_REFUSAL)
        return self

    @field_validator("train_command", mode="before")
    @classmethod
    def _train_command(cls, v: Any) -> Any:
        if isinstance(v, str):  # a JSON list, or words split on spaces
            return json.loads(v) if v.strip().startswith("[") else v.split()
        return v

    @field_validator("encoder")
    @classmethod
    def _encoder(cls, v: str) -> str:
        if v not in ("auto", "cpu", "nvenc"):
            raise ValueError("encoder must be auto, cpu or nvenc")
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, YamlSource(settings_cls), file_secret_settings)


def load_settings(**overrides: Any) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
