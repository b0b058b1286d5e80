"""The token commands against a real `conveyor serve` with auth on."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from conveyor.cli import app
from tests.conftest import FAST_ENV, Server, launch


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    env = {**FAST_ENV, "CONVEYOR_TRIGGER_ENABLED": "false", "CONVEYOR_AUTH": "on"}
    srv = launch(tmp_path_factory.mktemp("cli-auth"), "serve", env=env, extra=["--no-trigger"])
    try:
        m = re.search(r"\b(cvy_[0-9a-f]+_[A-Za-z0-9_-]{43})\b", srv.log_text())
        assert m, srv.log_text()
        yield srv, m.group(1)
    finally:
        srv.stop()


def _cli(args: list[str], url: str, token: str | None) -> tuple[int, str]:
    env = {"CONVEYOR_URL": url, "CONVEYOR_TOKEN": token or ""}
    res = CliRunner().invoke(app, args, env=env)
    return res.exit_code, res.output


def test_token_create_list_revoke(server: tuple[Server, str], tmp_path: Path) -> None:
    srv, admin = server
    code, out = _cli(
        ["token", "create", "--role", "viewer", "--name", "dash", "--expires", "30d"],
        srv.url,
        admin,
    )
    assert code == 0, out
    token = re.search(r"cvy_[0-9a-f]+_[A-Za-z0-9_-]{43}", out)
    assert token, out
    viewer = {"Authorization": f"Bearer {token.group(0)}"}
    assert httpx.get(f"{srv.url}/api/tasks", headers=viewer).status_code == 200

    code, out = _cli(["token", "list"], srv.url, admin)
    assert code == 0 and "dash" in out and "viewer" in out and "active" in out
    assert token.group(0) not in out  # never shown again

    token_id = token.group(0).split("_")[1]
    code, out = _cli(["token", "revoke", token_id], srv.url, admin)
    assert code == 0 and "revoked" in out
    assert httpx.get(f"{srv.url}/api/tasks", headers=viewer).status_code == 401

    # without a token, or with a viewer's, the commands are refused
    assert _cli(["token", "list"], srv.url, None)[0] == 2
    code, out = _cli(["tasks"], srv.url, None)
    assert code == 2 and "unauthenticated" in out


def test_worker_token_enrolls_once(server: tuple[Server, str]) -> None:
    srv, admin = server
    code, out = _cli(["worker", "token", "--name", "gpu-cli", "--ttl", "2m"], srv.url, admin)
    assert code == 0, out
    token = re.search(r"cve1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", out)
    assert token, out
    body = {"token": token.group(0), "name": "gpu-cli"}
    r = httpx.post(f"{srv.url}/api/workers/enroll", json=body)
    assert r.status_code == 200 and r.json()["worker_id"] == "gpu-cli"
    assert httpx.post(f"{srv.url}/api/workers/enroll", json=body).status_code == 401
    assert "refused" in srv.log_text()  # the refusal is logged by the server
    assert token.group(0) not in srv.log_text()
    assert r.json()["credential"] not in srv.log_text()
    # `conveyor worker` without a subcommand is still the worker itself
    code, out = _cli(["worker", "--help"], srv.url, None)
    assert code == 0 and "--concurrency" in out and "token" in out
