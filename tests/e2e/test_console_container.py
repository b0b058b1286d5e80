"""The console's container form through the real app (TestClient, no worker)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conveyor.models import Trigger, WorkerInfo
from tests.conftest import in_process_app


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    with in_process_app(tmp_path, monkeypatch) as client:
        yield client


@pytest.mark.parametrize(
    ("lang", "title"), [("en", "Run a container job"), ("zh-CN", "运行容器任务")]
)
def test_the_form_renders_in_both_languages(app: TestClient, lang: str, title: str) -> None:
    r = app.get("/admin/tasks/run", headers={"accept-language": lang})
    assert r.status_code == 200 and title in r.text
    assert 'href="/admin/tasks/run"' in app.get("/admin/tasks/new").text


def test_submit_a_container_task_from_the_console(app: TestClient) -> None:
    r = app.post(
        "/admin/tasks/run",
        data={
            "image": "trainer:1",
            "command": "python train.py --name 'two words'",
            "env": "EPOCHS=3\nMODE=fast\n",
            "gpus": "0,2",
            "timeout_s": "60",
            "max_attempts": "2",
            "priority": "5",
        },
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    task_id = r.headers["location"].rsplit("/", 1)[1]
    task = app.app.state.service.get(task_id)  # type: ignore[attr-defined]
    assert task.kind == "container" and task.trigger == Trigger.CONSOLE
    assert task.params["command"] == ["python", "train.py", "--name", "two words"]
    assert task.params["env"] == {"EPOCHS": "3", "MODE": "fast"}
    assert task.params["gpus"] == ["0", "2"] and task.params["timeout_s"] == 60
    assert (task.max_attempts, task.priority) == (2, 5)
    page = app.get(r.headers["location"])
    assert page.status_code == 200 and "container" in page.text


@pytest.mark.parametrize(
    ("data", "text"),
    [
        ({"image": "", "command": ""}, "give an image, a command, or both"),
        ({"image": "x", "env": "NOEQUALS"}, "expected NAME=value"),
        ({"image": "x", "gpus": "99"}, "gpus"),
        ({"image": "x", "command": "sh -c 'unclosed"}, "command"),
        ({"image": "x", "timeout_s": "soon"}, "not a number"),
    ],
)
def test_bad_input_comes_back_with_the_reason(
    app: TestClient, data: dict[str, str], text: str
) -> None:
    r = app.post("/admin/tasks/run", data=data)
    assert r.status_code == 400 and text in r.text, r.text[-2000:]
    if data.get("image"):
        assert 'value="x"' in r.text  # the form keeps what was typed


@pytest.mark.parametrize(
    ("lang", "prefix"),
    [
        ("en", "Waiting: no live worker runs"),
        ("zh-CN", "等待中：没有在线的工作节点运行"),
    ],
)
def test_the_task_page_says_why_no_worker_takes_container_tasks(
    app: TestClient, lang: str, prefix: str
) -> None:
    """A worker without an engine does not take container tasks (no fallback to the
    local runner) and says why; a pending container task shows that reason."""
    service = app.app.state.service  # type: ignore[attr-defined]
    why = (
        "no container engine on this worker (no answer); the local runner is off "
        "unless its operator turns it on"
    )
    worker = WorkerInfo(
        id="cpu-1", kinds=["transcode"], capabilities={"unavailable": {"container": why}}
    )
    service.backend.heartbeat(worker, [], 30)
    r = app.post(
        "/admin/tasks/run",
        data={"image": "trainer:1", "command": "python train.py"},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    task_id = r.headers["location"].rsplit("/", 1)[1]
    page = app.get(r.headers["location"], headers={"accept-language": lang})
    assert page.status_code == 200
    assert prefix in page.text and why in page.text, page.text[-3000:]
    shown = service.get(task_id, explain=True).waiting_reason
    assert shown == f"no live worker runs container tasks: {why}"
