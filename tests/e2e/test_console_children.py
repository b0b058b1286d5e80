"""The console and the API on a parent task (issue 18): a task split into children shows
"waiting for children" (not a retry), its Child tasks card, and GET /children; through
the real app (FastAPI TestClient, SQLite), in English and Simplified Chinese."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from conveyor.models import OutputFile, Task


def _split(app: TestClient) -> tuple[str, list[str]]:
    """A transcode task submitted, claimed and split into three children, one completed."""
    assert app.put("/api/files/input/v.mp4", content=b"\x00" * 64).status_code == 201
    r = app.post("/api/queue/add", json={"input_key": "v.mp4", "transcode_types": ["mp4_standard"]})
    assert r.status_code == 201, r.text
    backend: Any = app.app.state.service.backend  # type: ignore[attr-defined]
    (held,) = backend.claim("w1", ["transcode"], 1, 60.0)
    kids = [
        Task(kind="transcode", input=held.task.input, params={**held.task.params, "part": i})
        for i in range(3)
    ]
    backend.spawn_children(held.lease, kids)
    first = backend.claim("w2", ["transcode"], 1, 60.0)[0]
    backend.complete(first.lease, [OutputFile(name="c", bucket="output", key="c.mp4")])
    return held.task.id, [k.id for k in backend.children(held.task.id)]


def test_a_parent_waits_for_its_children_in_the_api_and_the_console(app: TestClient) -> None:
    parent_id, kids = _split(app)
    t = app.get(f"/api/tasks/{parent_id}").json()
    assert t["status"] == "pending" and t["children"] == 3
    assert t["waiting_reason"] == "waiting for its children: 1 of 3 completed (33.3 %)"
    summary = app.get(f"/api/tasks/{parent_id}/children").json()
    assert [c["id"] for c in summary["children"]] == kids
    assert summary["by_status"] == {"completed": 1, "pending": 2}
    assert summary["percent"] == pytest.approx(33.3)
    assert app.get("/api/tasks/nope/children").status_code == 404

    page = app.get(f"/admin/tasks/{parent_id}").text
    assert 'id="task-children"' in page and "waiting for children" in page
    assert "retry pending" not in page and "9999-" not in page  # the hold is no date
    for kid in kids:
        assert f'data-child="{kid}"' in page
    assert "1 of 3 completed" in page
    zh = app.get(f"/admin/tasks/{parent_id}", headers={"accept-language": "zh-CN"}).text
    assert "等待子任务" in zh and "子任务" in zh and "已完成 1 / 3" in zh


def test_the_queue_counts_a_parent_as_waiting_for_children_not_delayed(app: TestClient) -> None:
    """GET /api/queue/status, /metrics and the queue page: the held parent is neither a
    retry back-off nor lost from the counts (clearing the queue cancels it too)."""
    _split(app)
    status = app.get("/api/queue/status").json()
    assert (status["pending"], status["delayed"], status["waiting_for_children"]) == (2, 0, 1)
    metrics = app.get("/metrics").text
    assert 'conveyor_queue_tasks{kind="transcode",status="waiting_for_children"} 1.0' in metrics
    assert 'conveyor_queue_tasks{kind="transcode",status="delayed"} 0.0' in metrics
    page = app.get("/admin/queue").text
    assert 'id="q-children">1<' in page and "Waiting for their children" in page
    zh = app.get("/admin/queue", headers={"accept-language": "zh-CN"}).text
    assert "等待子任务完成" in zh
    confirm = app.get("/admin/queue/clear", headers={"HX-Request": "true"}).text
    assert "cancel 3 waiting tasks" in confirm
