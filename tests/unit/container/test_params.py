"""Container params: what submit accepts and refuses, and the retry rule."""

from __future__ import annotations

import pytest

from conveyor.errors import InvalidParams, ProcessorError
from conveyor.processors.container import ContainerProcessor, redactor, resolve_secrets
from conveyor.processors.container.params import ContainerParams, parse_size
from conveyor.processors.container.runner import LineSplitter


def validate(**params: object) -> dict[str, object]:
    return ContainerProcessor().validate(dict(params), None)


def test_minimal_and_full_params() -> None:
    assert validate(image="busybox")["command"] == []
    p = validate(
        image="trainer:1",
        command=["python", "train.py"],
        env={"EPOCHS": "3"},
        secrets=["WANDB_KEY"],
        gpus=["0", "3"],
        memory="4g",
        shm_size="512m",
        timeout_s=60,
        retry_on=[3, "oom"],
        inputs=[{"bucket": "input", "key": "a/b.csv"}],
        outputs="/out",
    )
    assert p["memory"] == 4 * 1024**3 and p["shm_size"] == 512 * 1024**2
    assert p["gpus"] == ["0", "3"] and p["retry_on"] == [3, "oom"]


@pytest.mark.parametrize(
    ("params", "where"),
    [
        ({}, "give an image, a command, or both"),
        ({"command": ["x"], "runner": "docker"}, "needs an image"),
        ({"image": "x", "env": {"1BAD": "v"}}, "env"),
        ({"image": "x", "secrets": ["no-dash"]}, "secrets"),
        ({"image": "x", "gpus": -1}, "gpus"),
        ({"image": "x", "gpus": ["0", "0"]}, "gpus"),
        ({"image": "x", "memory": "lots"}, "memory"),
        ({"image": "x", "outputs": "relative/dir"}, "outputs"),
        ({"image": "x", "workdir": "/a/../b"}, "workdir"),
        ({"image": "x", "inputs": [{"bucket": "input", "key": "../etc/passwd"}]}, "inputs"),
        ({"image": "x", "retry_on": ["sometimes"]}, "retry_on"),
        ({"image": "x", "password": "hunter2"}, "password"),
    ],
)
def test_bad_params_are_refused_at_submit(params: dict[str, object], where: str) -> None:
    with pytest.raises(InvalidParams, match=r"invalid container parameter") as exc:
        validate(**params)
    assert where in str(exc.value)


def test_retry_rule() -> None:
    default = ContainerParams(image="x")
    assert default.retries(3, False) and default.retries(None, False) and default.retries(137, True)
    assert not default.retries(127, False) and not default.retries(126, False)
    assert ContainerParams(image="x", retry_on=[127]).retries(127, False)
    only3 = ContainerParams(image="x", retry_on=[3])
    assert only3.retries(3, False)
    assert not only3.retries(4, False) and not only3.retries(None, False)
    assert not only3.retries(137, True)
    oom = ContainerParams(image="x", retry_on=["oom"])
    assert oom.retries(137, True) and not oom.retries(137, False)


def test_sizes() -> None:
    assert parse_size(1024) == 1024
    assert parse_size("1.5g") == int(1.5 * 1024**3)
    assert parse_size("256MiB") == 256 * 1024**2
    with pytest.raises(ValueError):
        parse_size("0")


def test_secrets_resolve_from_the_worker_and_are_redacted() -> None:
    env = {"CONVEYOR_SECRET_TOKEN": "abcd1234"}
    assert resolve_secrets(["TOKEN"], env) == {"TOKEN": "abcd1234"}
    with pytest.raises(ProcessorError, match="CONVEYOR_SECRET_OTHER") as exc:
        resolve_secrets(["TOKEN", "OTHER"], env)
    assert not exc.value.retryable
    assert redactor(["abcd1234"])("token abcd1234!") == "token ********!"


def test_line_splitter_keeps_partial_lines_until_complete() -> None:
    got: list[tuple[str, str]] = []
    s = LineSplitter("stdout", lambda stream, line: got.append((stream, line)))
    s.feed(b"one\ntw")
    assert got == [("stdout", "one")]
    s.feed(b"o\r\nthr\xc3")
    s.feed(b"\xa9e")
    s.close()
    assert got == [("stdout", "one"), ("stdout", "two"), ("stdout", "thr\u00e9e")]
