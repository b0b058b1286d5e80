"""The container kind's settings (docs/container.md): ``CONVEYOR_CONTAINER_*``, and the
names they had before, which keep working.

| field | env | config.yaml |
| --- | --- | --- |
| ``runner`` … ``local_unsandboxed`` | ``CONVEYOR_CONTAINER_<FIELD>`` | ``container_<field>`` |
| ``docker_host`` | ``DOCKER_HOST``, ``CONVEYOR_DOCKER_HOST`` | ``docker_host`` |
| ``gpus`` | ``CONVEYOR_GPUS`` | ``gpus`` |
| ``train_image``, ``train_command``, ``train_gpus`` | ``CONVEYOR_TRAIN_*`` | ``train_*`` |

Each also answers to ``CONVEYOR_CONTAINER_<FIELD>``.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, ClassVar

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from conveyor.config import KindSettings, parse_duration

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


def _names(field: str, *older: str) -> AliasChoices:
    return AliasChoices(f"CONVEYOR_CONTAINER_{field.upper()}", *older)


class ContainerSettings(KindSettings):
    model_config = SettingsConfigDict(env_prefix="CONVEYOR_CONTAINER_")
    keys: ClassVar[dict[str, str]] = {
        name: name for name in ("docker_host", "gpus", "train_image", "train_command", "train_gpus")
    }

    runner: str = "auto"  # auto | docker | local | off
    docker_host: str = Field(
        "", validation_alias=_names("docker_host", "CONVEYOR_DOCKER_HOST", "DOCKER_HOST")
    )
    network: str = ""  # "" = the engine's default
    grace: float = 10.0
    reap_interval: float = 300.0
    sync_interval: float = 30.0  # 0: after the job only
    # the sandbox (docs/container.md "Runners" and "The Docker sandbox"): the uid:gid
    # Docker jobs run as, their process limit, the caps on what one attempt may leave in
    # its output folder, registries allowed although they are loopback or link-local;
    # the local runner's uid[:gid] or user name ("" = the worker's own) and the flag
    # without which it is refused while auth is on (LOCAL_RUNNER_RISK)
    user: str = "65534:65534"
    pids_limit: int = Field(512, ge=16, le=4_194_304)
    max_output_bytes: int = Field(10 * 1024**3, ge=1)
    max_output_files: int = Field(100_000, ge=1)
    local_registries: Annotated[list[str], NoDecode] = Field(default_factory=list)
    local_user: str = ""
    local_unsandboxed: str = ""
    # the GPUs this worker hands to container tasks: auto (nvidia-smi) | none | 0,1,2,3
    gpus: str = Field("auto", validation_alias=_names("gpus", "CONVEYOR_GPUS"))
    # the training face (POST /train) runs this image and command with the body as arguments
    train_image: str = Field(
        "conveyor/train-mlp:latest", validation_alias=_names("train_image", "CONVEYOR_TRAIN_IMAGE")
    )
    train_command: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["python", "/app/train.py"],
        validation_alias=_names("train_command", "CONVEYOR_TRAIN_COMMAND"),
    )
    train_gpus: int = Field(
        0, ge=0, le=64, validation_alias=_names("train_gpus", "CONVEYOR_TRAIN_GPUS")
    )

    @field_validator("grace", "reap_interval", "sync_interval", mode="before")
    @classmethod
    def _durations(cls, v: Any) -> float:
        return parse_duration(v)

    @field_validator("runner")
    @classmethod
    def _runner(cls, v: str) -> str:
        if v not in ("auto", "docker", "local", "off"):
            raise ValueError("container_runner must be auto, docker, local or off")
        return v

    @field_validator("user")
    @classmethod
    def _user(cls, v: str) -> str:
        if not re.fullmatch(r"\d{1,10}(:\d{1,10})?", v.strip()):
            raise ValueError("container_user must be a numeric uid or uid:gid, e.g. 65534:65534")
        return v.strip()

    @field_validator("local_registries", mode="before")
    @classmethod
    def _registries(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [r.strip().lower() for r in v.split(",") if r.strip()]
        return v

    @field_validator("train_command", mode="before")
    @classmethod
    def _train_command(cls, v: Any) -> Any:
        if isinstance(v, str):  # a JSON list, or words split on spaces
            return json.loads(v) if v.strip().startswith("[") else v.split()
        return v

    def check(self, settings: Any) -> None:
        """The local runner runs submitters' commands on this host: where others may
        submit (auth on, or a worker joined to an API) its operator must say so."""
        if (
            self.runner == "local"
            and local_runner_guarded(settings)
            and self.local_unsandboxed != LOCAL_RUNNER_RISK
        ):
            raise ValueError(LOCAL_RUNNER_REFUSAL)
