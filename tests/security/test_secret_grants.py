"""Issue 13, finding 3: a worker's secrets are granted per name, per token.

``params.secrets: ["NAME"]`` hands the job ``CONVEYOR_SECRET_<NAME>`` from the
worker's environment, and a job can print it past the log redaction (``rev``,
base64): so asking for a secret must itself be allowed.  Against a real
``conveyor serve`` with auth on: a token may ask only for the names it was
granted (``conveyor token create --secret NAME``, kept with the token in the
auth store); anything else is a 403 at submit naming the secret; the admin may
ask for any.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .auth_server import AuthServer, auth_server, which_conveyor

pytestmark = pytest.mark.timeout(120)


def _job(*secrets: str) -> dict[str, object]:
    return {"kind": "container", "params": {"command": ["true"], "secrets": list(secrets)}}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    print("server code:", which_conveyor())
    with auth_server(tmp_path_factory.mktemp("secret-grants")) as a:
        yield a


def test_a_secret_nobody_granted_is_refused_at_submit(api: AuthServer) -> None:
    token = api.code_runner("dev-nogrant")
    with api.client(token) as c:
        r = c.post("/api/queue/add", json=_job("WANDB_API_KEY"))
        assert r.status_code == 403, (
            f"a token granted no secret asked for WANDB_API_KEY and got {r.status_code}: "
            f"{r.text[:300]}"
        )
        assert "WANDB_API_KEY" in r.json()["error"]["message"]
        assert c.get("/api/tasks").json()["tasks"] == []


def test_a_token_gets_exactly_the_secrets_it_was_granted(api: AuthServer) -> None:
    out = api.cli(
        "token",
        "create",
        "--role",
        "developer",
        "--name",
        "dev-wandb",
        "--secret",
        "WANDB_API_KEY",
        token=api.admin,
    )
    assert out.returncode == 0, f"conveyor token create --secret: {out.stderr}"
    token = out.stdout.strip().splitlines()[-1].strip()
    with api.client(token) as c:
        ok = c.post("/api/queue/add", json=_job("WANDB_API_KEY"))
        assert ok.status_code == 201, ok.text
        r = c.post("/api/queue/add", json=_job("WANDB_API_KEY", "AWS_SECRET_ACCESS_KEY"))
        assert r.status_code == 403, r.text
        message = r.json()["error"]["message"]
        assert "AWS_SECRET_ACCESS_KEY" in message and "WANDB_API_KEY" not in message, message
    with api.client(api.admin) as c:
        listed = {t["name"]: t for t in c.get("/api/tokens").json()}
    assert listed["dev-wandb"]["secrets"] == ["WANDB_API_KEY"]
    out = api.cli("token", "list", token=api.admin)
    assert "WANDB_API_KEY" in out.stdout, out.stdout


def test_the_admin_may_ask_for_any_secret(api: AuthServer) -> None:
    with api.client(api.admin) as c:
        r = c.post("/api/queue/add", json=_job("ANYTHING_AT_ALL"))
    assert r.status_code == 201, r.text


def test_secrets_are_granted_only_to_roles_that_run_code(api: AuthServer) -> None:
    with api.client(api.admin) as c:
        r = c.post(
            "/api/tokens", json={"name": "sub-s", "role": "submitter", "secrets": ["WANDB_API_KEY"]}
        )
        assert r.status_code == 400, r.text
        assert "tasks:run_code" in r.json()["error"]["message"]
        bad = c.post(
            "/api/tokens",
            json={"name": "dev-bad", "role": "developer", "secrets": ["no-such name"]},
        )
        assert bad.status_code in (400, 422), bad.text
