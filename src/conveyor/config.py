"""Settings from env vars (``CONVEYOR_*`` plus older names such as ``INPUT_BUCKET``) and
config.yaml.

``config.yaml`` may hold ``default``, ``development`` and ``production``
sections; ``CONVEYOR_ENV`` picks the section that overrides
``default``.  Environment variables override the file.  Secrets never live
here: they come from the environment or the standard credential chains.

:class:`Settings` holds what the service itself needs.  Each task kind keeps
its own settings in its processor's folder (a :class:`KindSettings`, the
processor's ``settings_model``, with its own env prefix ``CONVEYOR_<KIND>_``);
they are loaded with ``Settings``, from the same environment and the same
config.yaml, and checked against it.  The names those settings had before they
moved there (``CONVEYOR_ENCODER``, ``container_runner`` in config.yaml, …)
keep working: as environment variables, as config.yaml keys, as keyword
arguments to :func:`load_settings` and as attributes of ``Settings``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar
from urllib.parse import urlencode

from pydantic import AliasChoices, Field, PrivateAttr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

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


def _env(default: Any, name: str, *older_names: str, **kw: Any) -> Any:
    """A field read from ``CONVEYOR_<NAME>`` or any of its older names (``INPUT_BUCKET``,
    ``SQS_QUEUE_URL``, ...: the transcoding service's)."""
    alias = AliasChoices(f"CONVEYOR_{name}", *older_names)
    if callable(default):
        return Field(default_factory=default, validation_alias=alias, **kw)
    return Field(default, validation_alias=alias, **kw)


def yaml_config() -> dict[str, Any]:
    """The selected environment section of config.yaml over ``default`` (``{}`` without
    a file): ``CONVEYOR_CONFIG`` names the file, ``CONVEYOR_ENV`` the section."""
    path = Path(os.environ.get("CONVEYOR_CONFIG", "config.yaml"))
    if not path.is_file():
        return {}
    import yaml  # here: most processes have no config.yaml (a Slurm job's start skips it)

    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of environments")
    env = os.environ.get("CONVEYOR_ENV", "default")
    sections = {"default", "development", "production"}
    if sections & raw.keys():
        return {**(raw.get("default") or {}), **(raw.get(env) or {})}
    return raw


class YamlSource(PydanticBaseSettingsSource):
    """Reads config.yaml (:func:`yaml_config`); ``keys`` maps a field to its key in the
    file where the two differ (a kind's settings: ``<kind>_<field>``)."""

    def __init__(
        self, settings_cls: type[BaseSettings], keys: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(settings_cls)
        self.keys = dict(keys or {})
        self.data = yaml_config()

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        key = self.keys.get(field_name, field_name)
        return self.data.get(key), key, False

    def __call__(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.settings_cls.model_fields:
            key = self.keys.get(name, name)
            if key in self.data:
                out[name] = self.data[key]
        return out


K = TypeVar("K", bound="KindSettings")


class KindSettings(BaseSettings):
    """A task kind's own settings: its processor's ``settings_model``.

    A subclass sets ``model_config = SettingsConfigDict(env_prefix="CONVEYOR_<KIND>_")``:
    a field ``foo`` is then read from ``CONVEYOR_<KIND>_FOO`` and from config.yaml's
    ``<kind>_foo`` (its *key*, also its name as an attribute of :class:`Settings`).  A
    field that had other names before lists every env name it answers to in its
    ``validation_alias`` (the prefixed one first) and its older key in ``keys``.
    """

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    # field -> its config.yaml key, where that is not <kind>_<field>
    keys: ClassVar[dict[str, str]] = {}

    @classmethod
    def key(cls, field: str) -> str:
        """``field``'s key in config.yaml, as a keyword of ``load_settings`` and as an
        attribute of ``Settings``."""
        if field in cls.keys:
            return cls.keys[field]
        prefix = str(cls.model_config.get("env_prefix") or "").lower()
        return prefix.removeprefix("conveyor_") + field

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        keys = {name: cls.key(name) for name in cls.model_fields}
        return (init_settings, env_settings, YamlSource(settings_cls, keys), file_secret_settings)

    @classmethod
    def load(cls, values: Mapping[str, Any] | None = None) -> Self:
        """From the environment and config.yaml, with ``values`` (by key) over both."""
        given = values or {}
        return cls(**{f: given[cls.key(f)] for f in cls.model_fields if cls.key(f) in given})

    @classmethod
    def of(cls, source: Any) -> Self:
        """This kind's settings as ``source`` holds them: a :class:`Settings` (loaded with
        it), or any object with some of the keys as attributes (a test's namespace: the
        rest take their defaults, and the environment is not read); None: the defaults."""
        if isinstance(source, cls):
            return source
        values: dict[str, Any] = {}
        if isinstance(source, Settings):
            values = source.kind_settings(cls).model_dump()
        own = vars(source) if source is not None and hasattr(source, "__dict__") else {}
        for name in cls.model_fields:
            key = cls.key(name)
            if key in own:
                values[name] = own[key]
        return cls.model_validate(values)

    def check(self, settings: Settings) -> None:
        """Rules across this kind's settings and the service's; raise ValueError."""


@cache
def kind_settings_models() -> tuple[type[KindSettings], ...]:
    """The settings models of the installed kinds (``conveyor.processors`` entry points)."""
    from conveyor.processors import installed

    models: list[type[KindSettings]] = []
    for proc in installed().values():
        model = proc.settings_model
        if model is not KindSettings and model not in models:
            models.append(model)
    return tuple(models)


def _kind_keys(models: tuple[type[KindSettings], ...]) -> dict[str, tuple[type[KindSettings], str]]:
    """key -> (model, field) over ``models``."""
    return {m.key(f): (m, f) for m in models for f in m.model_fields}


class Settings(BaseSettings):
    """What the service needs, whatever kinds it runs; each kind's own settings come
    with it (:meth:`kind_settings`)."""

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
    # tasks a worker claims beyond its free slots while recent tasks are short (None:
    # as many as its concurrency, up to 128 for tasks of milliseconds; 0: none); see
    # conveyor.worker.loop
    worker_prefetch: int | None = _env(None, "PREFETCH", ge=0, le=256)
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

    trigger_enabled: bool = _env(True, "TRIGGER_ENABLED")
    trigger_interval: float = _env(2.0, "TRIGGER_INTERVAL")
    trigger_settle_seconds: float = _env(2.0, "TRIGGER_SETTLE_SECONDS")
    # the AWS deployments' names: together they choose the aws backend and s3 storage
    aws_region: str = _env("", "AWS_REGION", "AWS_REGION", "AWS_DEFAULT_REGION")
    sqs_queue_url: str = _env("", "SQS_QUEUE_URL", "SQS_QUEUE_URL")
    dynamodb_table: str = _env("", "DYNAMODB_TABLE", "DYNAMODB_TABLE")
    # S3 -> SQS upload notifications; when set, the upload trigger reads them
    # instead of listing the input bucket
    s3_events_queue_url: str = _env("", "S3_EVENTS_QUEUE_URL", "S3_EVENTS_QUEUE_URL")

    # security (docs/security.md): off by default for the embedded, loopback-only `conveyor up`
    auth: bool = _env(False, "AUTH")
    worker_credential_ttl: float = _env(30 * 86400.0, "WORKER_CREDENTIAL_TTL")
    enrollment_ttl: float = _env(300.0, "ENROLLMENT_TTL")
    session_ttl: float = _env(12 * 3600.0, "SESSION_TTL")
    max_request_bytes: int = _env(1024 * 1024, "MAX_REQUEST_BYTES", ge=1024)  # JSON and forms
    max_json_depth: int = _env(32, "MAX_JSON_DEPTH", ge=2, le=1000)
    auth_rate_limit: int = _env(20, "AUTH_RATE_LIMIT", ge=1)  # login/enroll tries per IP a minute

    # each kind's settings (its processor's settings_model), loaded with these
    _kinds: dict[type[KindSettings], KindSettings] = PrivateAttr(default_factory=dict)

    def __init__(self, **values: Any) -> None:
        """``values`` may also hold the kinds' settings, by key (``container_runner=…``):
        they go to the kind's settings, which are loaded and checked here too."""
        models = kind_settings_models()
        keys = _kind_keys(models)
        own = {k: v for k, v in values.items() if k not in keys or k in type(self).model_fields}
        super().__init__(**own)
        for model in models:
            given = {k: v for k, v in values.items() if k in keys and keys[k][0] is model}
            section = model.load(given)
            section.check(self)
            self._kinds[model] = section

    def kind_settings(self, model: type[K]) -> K:
        """A kind's settings, as loaded with these (from the environment and config.yaml
        now, for a kind that was not installed when these were)."""
        section = self._kinds.get(model)
        if section is None:
            section = model.load()
            section.check(self)
            self._kinds[model] = section
        assert isinstance(section, model)
        return section

    if not TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any:
            """The kinds' settings by the names they had here (``settings.container_runner``)."""
            try:
                return super().__getattr__(name)
            except AttributeError:
                if name.startswith("_"):
                    raise
                models = (*self.__pydantic_private__.get("_kinds", {}), *kind_settings_models())
                found = _kind_keys(tuple(dict.fromkeys(models))).get(name)
                if found is None:
                    raise
                return getattr(self.kind_settings(found[0]), found[1])

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
        "worker_credential_ttl",
        "enrollment_ttl",
        "session_ttl",
        mode="before",
    )
    @classmethod
    def _durations(cls, v: Any) -> float:
        return parse_duration(v)

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
