"""The parameters of a ``container`` task, validated at submit time.

Everything here is stored in the task, so nothing here may be a secret:
``secrets`` holds names only, resolved on the worker when the job starts.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from conveyor.errors import InvalidRequest
from conveyor.storage.base import validate_bucket, validate_key

RetryOn = int | Literal["error", "exit", "oom"]
RETRY_ALL: tuple[RetryOn, ...] = ("error", "exit", "oom")
NOT_FOUND = (126, 127)  # the shell's (and docker-init's) "cannot execute" and "not found"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
# a secret name is looked up as CONVEYOR_SECRET_<NAME> on the worker
_SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def parse_size(value: Any) -> int:
    """Bytes from ``512m``, ``4g``, ``4GiB`` or a plain number (Docker's notation)."""
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        m = _SIZE.match(str(value))
        if not m:
            raise ValueError(f"invalid size {value!r}: use bytes or e.g. 512m, 4g")
        n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if n <= 0:
        raise ValueError("a size must be positive")
    return n


class InputObject(BaseModel):
    """A bucket object copied into the job's input folder before it starts."""

    model_config = ConfigDict(extra="forbid")

    bucket: str
    key: str
    path: str | None = Field(None, description="name inside the input folder (default: key)")

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, v: str) -> str:
        return _checked(validate_bucket, v)

    @field_validator("key", "path")
    @classmethod
    def _key(cls, v: str | None) -> str | None:
        # a path is relative with no '..', like a key: it lands under the input folder
        return None if v is None else _checked(validate_key, v)


def _checked(check: Callable[[str], str], v: str) -> str:
    """Storage's own checks, reported as a validation error naming the field."""
    try:
        return check(v)
    except InvalidRequest as exc:
        raise ValueError(exc.message) from None


class ContainerParams(BaseModel):
    """What a container job needs; the local-process runner uses all of it but ``image``."""

    model_config = ConfigDict(extra="forbid")

    image: str | None = Field(None, max_length=512)
    command: list[str] = Field(default_factory=list, max_length=4096)
    env: dict[str, str] = Field(default_factory=dict)
    secrets: list[str] = Field(default_factory=list, max_length=64)
    gpus: int | list[str] = 0
    cpus: float | None = Field(None, gt=0, le=1024)
    memory: int | None = None
    shm_size: int | None = None
    timeout_s: float | None = Field(None, gt=0, le=7 * 86400)
    max_attempts: int | None = Field(None, ge=1, le=100)
    retry_on: list[RetryOn] = Field(default_factory=lambda: list(RETRY_ALL))
    workdir: str | None = None
    inputs: list[InputObject] = Field(default_factory=list, max_length=1000)
    outputs: str = "/conveyor/outputs"
    runner: Literal["auto", "docker", "local"] = "auto"

    @field_validator("memory", "shm_size", mode="before")
    @classmethod
    def _sizes(cls, v: Any) -> int | None:
        return None if v is None else parse_size(v)

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if not _ENV_NAME.match(name):
                raise ValueError(f"invalid environment variable name {name!r}")
        return v

    @field_validator("secrets")
    @classmethod
    def _secrets(cls, v: list[str]) -> list[str]:
        for name in v:
            if not _SECRET_NAME.match(name):
                raise ValueError(f"invalid secret name {name!r}: letters, digits and _ only")
        return v

    @field_validator("gpus")
    @classmethod
    def _gpus(cls, v: int | list[str]) -> int | list[str]:
        if isinstance(v, int):
            if not 0 <= v <= 64:
                raise ValueError("gpus must be between 0 and 64")
        elif len(set(v)) != len(v) or not all(s.strip() for s in v):
            raise ValueError("gpu ids must be distinct and non-empty")
        return v

    @field_validator("workdir", "outputs")
    @classmethod
    def _abs(cls, v: str | None) -> str | None:
        if v is not None and (not v.startswith("/") or ".." in PurePosixPath(v).parts):
            raise ValueError(f"{v!r} must be an absolute path inside the container")
        return v

    @model_validator(mode="after")
    def _runnable(self) -> ContainerParams:
        if not self.command and not self.image:
            raise ValueError("give an image, a command, or both")
        if self.runner == "docker" and not self.image:
            raise ValueError("runner docker needs an image")
        return self

    @property
    def gpu_count(self) -> int:
        return self.gpus if isinstance(self.gpus, int) else len(self.gpus)

    def retries(self, exit_code: int | None, oom: bool) -> bool:
        """Whether a failed attempt is worth another try, by ``retry_on``."""
        if exit_code is None:
            return "error" in self.retry_on
        if oom and "oom" in self.retry_on:
            return True
        if exit_code in NOT_FOUND:  # the command is missing or not executable: it stays so
            return exit_code in self.retry_on
        return "exit" in self.retry_on or exit_code in self.retry_on
