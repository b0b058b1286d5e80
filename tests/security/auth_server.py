"""A real ``conveyor serve`` (or ``up``) with authentication on, and tokens made over HTTP.

The server is a subprocess started as an operator would start it; the first admin
token is read from its output (printed once), and every other token is made with
``POST /api/tokens`` as ``conveyor token create`` does.  Used by the containment
tests of issue 13 (run-code permission, secret grants, file scoping, low findings).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import FAST_ENV, Server, launch

TOKEN_RE = re.compile(r"\b(cvy_[0-9a-f]+_[A-Za-z0-9_-]{43})\b")


@dataclass
class AuthServer:
    srv: Server
    admin: str
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.srv.url

    def client(self, token: str | None = None, **kw: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kw)

    def token(self, name: str, role: str, **extra: Any) -> str:
        """A new token of ``role`` named ``name`` (the name is who its tasks belong to)."""
        with self.client(self.admin) as c:
            r = c.post("/api/tokens", json={"name": name, "role": role, **extra})
        assert r.status_code == 201, r.text
        token = str(r.json()["token"])
        self.tokens[name] = token
        return token

    def code_runner(self, name: str, secrets: list[str] | None = None) -> str:
        """A token whose role may run code: ``developer`` (granted ``secrets``).

        A server that predates the developer role (26b0a6e) refuses it; there any
        submitter could run code and ask for any secret, so a plain submitter stands
        in and the test then shows what that server let it do.
        """
        body: dict[str, Any] = {"name": name, "role": "developer"}
        if secrets:
            body["secrets"] = secrets
        with self.client(self.admin) as c:
            r = c.post("/api/tokens", json=body)
            if r.status_code in (400, 422):
                print(f"server refused a developer token ({r.status_code}): using a submitter")
                r = c.post("/api/tokens", json={"name": name, "role": "submitter"})
        assert r.status_code == 201, r.text
        token = str(r.json()["token"])
        self.tokens[name] = token
        return token

    def cli(self, *args: str, token: str | None = None, cwd: Path | None = None) -> Any:
        """``conveyor ARGS`` against this server, as a user runs it (CONVEYOR_TOKEN)."""
        env = {**os.environ, "CONVEYOR_URL": self.url, "CONVEYOR_TOKEN": token or ""}
        env["COLUMNS"] = "200"  # tables are not cut to fit
        env.pop("CONVEYOR_CONFIG", None)
        return subprocess.run(
            [sys.executable, "-m", "conveyor", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=cwd,
        )


@contextmanager
def auth_server(
    workdir: Path, command: str = "serve", env: dict[str, str] | None = None
) -> Iterator[AuthServer]:
    full_env = {**FAST_ENV, "CONVEYOR_AUTH": "on", **(env or {})}
    srv = launch(workdir, command, env=full_env)
    try:
        deadline = time.monotonic() + 10
        while not (found := TOKEN_RE.search(srv.log_text())) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert found, f"no admin token in the server's output:\n{srv.log_text()}"
        yield AuthServer(srv, found.group(1))
    finally:
        srv.stop()


def which_conveyor() -> str:
    """Where the ``conveyor`` package the servers run comes from (old or new code)."""
    out = subprocess.run(
        [sys.executable, "-c", "import conveyor; print(conveyor.__file__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()
