"""Issue 13, finding 1 (the permission half): running code is its own permission.

A ``container`` task (API, console form, ``conveyor run``) and seed 003's
``POST /train`` run code the caller supplies.  Against a real ``conveyor serve``
with auth on: a submitter is refused at submit (403 naming ``tasks:run_code``),
an operator too; a ``developer`` token (made with ``conveyor token create --role
developer``) and the admin may; the console offers the container form only to
roles that may run code and says, in English and Chinese, who may and what such
code sees.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .auth_server import AuthServer, auth_server, which_conveyor

pytestmark = pytest.mark.timeout(180)

JOB = {"kind": "container", "params": {"command": ["id"]}}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    print("server code:", which_conveyor())
    with auth_server(tmp_path_factory.mktemp("run-code")) as a:
        a.token("sub", "submitter")
        a.token("ops", "operator")
        yield a


def _refused(r: object, what: str) -> None:
    status = getattr(r, "status_code", None)
    text = getattr(r, "text", "")
    assert status == 403, f"{what}: answered {status}, not 403: {text[:300]}"
    assert "tasks:run_code" in text, f"{what}: the refusal does not name tasks:run_code: {text}"


def test_a_submitter_cannot_run_code_through_the_api(api: AuthServer) -> None:
    with api.client(api.tokens["sub"]) as c:
        _refused(c.post("/api/queue/add", json=JOB), "submitter's container task")
        _refused(c.post("/train", json={"epochs": 1}), "submitter's POST /train")
        listed = c.get("/api/tasks").json()["tasks"]
    assert listed == [], f"the refused submits left tasks behind: {listed}"


def test_an_operator_cannot_run_code_either(api: AuthServer) -> None:
    with api.client(api.tokens["ops"]) as c:
        _refused(c.post("/api/queue/add", json=JOB), "operator's container task")
        _refused(c.post("/train", json={"epochs": 1}), "operator's POST /train")


def test_a_submitter_cannot_run_code_from_the_console_or_the_cli(api: AuthServer) -> None:
    with api.client(api.tokens["sub"], follow_redirects=False) as c:
        page = c.get("/admin/tasks/new")
        assert page.status_code == 200, page.text[:300]
        assert "/admin/tasks/run" not in page.text, "the console offers a submitter the run form"
        form = {"image": "", "command": "id", "env": "", "gpus": "", "timeout_s": ""}
        form.update({"max_attempts": "", "priority": "0"})
        r = c.post("/admin/tasks/run", data=form)
        assert r.status_code == 403, f"console run form as submitter: {r.status_code}"
        assert "tasks:run_code" in r.text
    out = api.cli("run", "--local", "--", "id", token=api.tokens["sub"])
    assert out.returncode == 2, f"conveyor run as submitter exited {out.returncode}: {out}"
    assert "tasks:run_code" in out.stderr + out.stdout


def test_a_developer_token_from_the_cli_runs_code_and_sees_only_its_own(
    api: AuthServer, tmp_path: Path
) -> None:
    out = api.cli("token", "create", "--role", "developer", "--name", "dev", token=api.admin)
    assert out.returncode == 0, f"conveyor token create --role developer: {out.stderr}"
    dev = out.stdout.strip().splitlines()[-1].strip()
    assert dev.startswith("cvy_"), out.stdout
    with api.client(dev) as c:
        mine = c.post("/api/queue/add", json=JOB)
        assert mine.status_code == 201, mine.text
        train = c.post("/train", json={"epochs": 1})
        assert train.status_code == 201, train.text
        ids = {t["id"] for t in c.get("/api/tasks").json()["tasks"]}
    with api.client(api.admin) as c:
        theirs = c.post("/api/queue/add", json=JOB)
        assert theirs.status_code == 201, theirs.text
    assert ids == {mine.json()["task_id"], train.json()["task_id"]}
    with api.client(dev) as c:
        other = c.get(f"/api/tasks/{theirs.json()['task_id']}")
        assert other.status_code == 403, "a developer reads another's task"
        queue = c.get("/api/queue/status").json()
        assert queue["pending"] + queue["delayed"] + queue["processing"] == 2, queue
    with api.client(dev, follow_redirects=False) as c:
        page = c.get("/admin/tasks/new")
        assert "/admin/tasks/run" in page.text, "the console hides the run form from a developer"


@pytest.mark.parametrize(
    ("lang", "words"),
    [("en", ["developer", "admin", "sandbox"]), ("zh-CN", ["开发者", "管理员", "沙箱"])],
)
def test_the_console_says_who_may_run_code_and_what_it_sees(
    api: AuthServer, lang: str, words: list[str]
) -> None:
    with api.client(api.admin, cookies={"lang": lang}) as c:
        page = c.get("/admin/tasks/run")
    assert page.status_code == 200
    note = page.text.split('id="run-code-note"', 1)
    assert len(note) == 2, "the run page has no note on who may run code"
    text = note[1][:600]
    for word in words:
        assert word in text, f"{lang}: the note does not say {word!r}: {text}"
