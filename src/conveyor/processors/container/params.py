"""The parameters of a ``container`` task, validated at submit time.

Everything here is stored in the task, so nothing here may be a secret:
``secrets`` holds names only, resolved on the worker when the job starts.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
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
# where the job finds its inputs (and nothing else of ours); outputs must lie elsewhere
INPUT_DIR = "/conveyor/inputs"
HOME_DIR = "/conveyor/home"

# Docker's image reference grammar (github.com/distribution/reference), anchored.  A
# first component is a registry only when it has a '.' or a ':' or is 'localhost',
# as the engine reads it; anything else is a lower-case path component.
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_PORT = r"(?::[0-9]{1,5})?"
_DOMAIN = (
    rf"(?:localhost{_PORT}"
    rf"|{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})+{_PORT}"
    rf"|{_DOMAIN_COMPONENT}:[0-9]{{1,5}}"
    rf"|\[[0-9a-fA-F:.]+\]{_PORT})"
)
_REFERENCE = re.compile(
    rf"(?:(?P<domain>{_DOMAIN})/)?"
    rf"(?P<path>{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?"
    r"(?:@(?P<digest>[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}))?"
)
_DIGEST_HEX = {"sha256": 64, "sha384": 96, "sha512": 128}
_NUMERIC_LABEL = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)$", re.IGNORECASE)


def check_image(ref: str) -> str:
    """``ref`` if it is a well-formed image reference, else ValueError saying why.

    Stricter than the engine on purpose: a reference never reaches the Engine API
    unless it is one (``../../containers/json`` is not), and a digest is a real one.
    """
    m = _REFERENCE.fullmatch(ref)
    if m is None:
        raise ValueError(
            f"{ref!r} is not an image reference (name[:tag][@digest], "
            "lower-case, e.g. registry.example.com/team/trainer:1)"
        )
    domain, path, digest = m.group("domain"), m.group("path"), m.group("digest")
    if len((f"{domain}/" if domain else "") + path) > 255:
        raise ValueError(f"{ref!r}: an image name is at most 255 characters")
    if digest is not None:
        algorithm, _, hexits = digest.partition(":")
        if _DIGEST_HEX.get(algorithm) != len(hexits):
            raise ValueError(f"{ref!r}: a digest is sha256:<64 hex digits> (or sha384, sha512)")
    return ref


def registry_host(ref: str) -> str | None:
    """The registry ``host[:port]`` a well-formed reference names, or None (Docker Hub)."""
    m = _REFERENCE.fullmatch(ref)
    return m.group("domain") if m is not None else None


def internal_registry(domain: str) -> str | None:
    """Why pulling from ``domain`` would make the engine call its own host (loopback,
    link-local, unspecified, or a number the resolver reads as an address), or None."""
    host = domain.lower()
    if host.startswith("["):
        host = host[1 : host.index("]")] if "]" in host else host[1:]
    elif ":" in host:
        host = host.rsplit(":", 1)[0]
    if host == "localhost" or host.endswith(".localhost"):
        return f"{host} is this host"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if all(_NUMERIC_LABEL.match(label) for label in host.split(".")):
            return f"{host} is an address written in a form only a resolver reads"
        return None
    mapped = getattr(ip, "ipv4_mapped", None)
    if mapped is not None:
        ip = mapped
    if ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast:
        return f"{host} is a loopback, link-local or unspecified address"
    return None


def registry_refusal(ref: str | None, allowed: Iterable[str]) -> str | None:
    """Why ``ref``'s registry is refused on this deployment, or None."""
    domain = registry_host(ref) if ref else None
    if domain is None:
        return None
    why = internal_registry(domain)
    if why is None or domain.lower() in {a.lower() for a in allowed}:
        return None
    return (
        f"image {ref}: its registry {why}; refused unless the operator lists {domain} "
        "in CONVEYOR_CONTAINER_LOCAL_REGISTRIES"
    )


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

    @field_validator("image")
    @classmethod
    def _image(cls, v: str | None) -> str | None:
        return None if v is None else check_image(v)

    @field_validator("workdir", "outputs")
    @classmethod
    def _abs(cls, v: str | None) -> str | None:
        if v is not None and (
            not v.startswith("/")
            or ".." in PurePosixPath(v).parts
            or any(ord(c) < 32 or c == "\x7f" for c in v)
        ):
            raise ValueError(f"{v!r} must be an absolute path inside the container")
        return v

    @field_validator("outputs")
    @classmethod
    def _outputs(cls, v: str) -> str:
        path = PurePosixPath(v)
        for ours in (INPUT_DIR, HOME_DIR):
            if (
                path == PurePosixPath("/")
                or path == PurePosixPath(ours)
                or (PurePosixPath(ours) in path.parents)
            ):
                raise ValueError(f"{v!r} cannot be the output folder (it is / or {ours})")
        return str(path)

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
