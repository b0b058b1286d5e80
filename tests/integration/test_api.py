"""The REST API on the embedded engines, in-process (no worker running)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conveyor.config import load_settings
from conveyor.server.app import create_app
from conveyor.server.runtime import Runtime


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("CONVEYOR_CONFIG", str(tmp_path / "none.yaml"))
    settings = load_settings(data_dir=tmp_path, max_upload_bytes=1_000_000)
    runtime = Runtime.build(settings, with_worker=False, with_trigger=False)
    with TestClient(create_app(runtime)) as client:
        yield client


def _upload(api: TestClient, key: str, data: bytes = b"\x00" * 100) -> None:
    r = api.put(f"/api/files/input/{key}", content=data)
    assert r.status_code == 201, r.text


def _error(r: object) -> dict[str, str]:
    body = r.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] and body["error"]["message"]
    return dict(body["error"])


def test_health(api: TestClient) -> None:
    r = api.get("/api/health")
    assert r.status_code == 200
    assert r.json()["status"] == "healthy"
    assert "transcode" in r.json()["kinds"]
    assert api.get("/api/v1/monitoring/health").json()["status"] == "healthy"


def test_openapi_docs(api: TestClient) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    for p in (
        "/api/health",
        "/api/queue/status",
        "/api/queue/add",
        "/api/tasks",
        "/api/tasks/{task_id}",
        "/api/tasks/{task_id}/retry",
        "/api/tasks/{task_id}/cancel",
        "/api/queue/clear",
        "/api/tasks/{task_id}/logs",
        "/api/files/{bucket}/{key}",
    ):
        assert p in paths, p
    assert api.get("/docs").status_code == 200


def test_add_seed_shape_and_get(api: TestClient) -> None:
    _upload(api, "video.mp4")
    r = api.post(
        "/api/queue/add",
        json={
            "input_bucket": "input",
            "input_key": "video.mp4",
            "transcode_types": ["mp4_standard"],
        },
    )
    assert r.status_code == 201, r.text
    task_id = r.json()["task_id"]
    t = api.get(f"/api/tasks/{task_id}").json()
    assert t["status"] == "pending"
    assert t["params"]["transcode_types"] == ["mp4_standard"]
    assert t["input"] == {"bucket": "input", "key": "video.mp4"}
    status = api.get("/api/queue/status").json()
    assert status["pending"] == 1


def test_default_types_when_omitted(api: TestClient) -> None:
    _upload(api, "v.mp4")
    r = api.post("/api/queue/add", json={"input_bucket": "input", "input_key": "v.mp4"})
    assert r.status_code == 201
    assert r.json()["task"]["params"]["transcode_types"] == [
        "mp4_standard",
        "mp4_smooth",
        "thumbnail",
    ]


def test_idempotency_key(api: TestClient) -> None:
    _upload(api, "v.mp4")
    body = {"input_key": "v.mp4", "idempotency_key": "abc"}
    first = api.post("/api/queue/add", json=body).json()
    second = api.post("/api/queue/add", json=body).json()
    assert first["task_id"] == second["task_id"]
    assert (first["created"], second["created"]) == (True, False)


@pytest.mark.parametrize(
    ("body", "status", "code", "needle"),
    [
        (None, 422, "invalid_request", "request body is empty"),
        (
            {"input_bucket": "input", "input_key": "v.mp4", "transcode_types": ["mp5_ultra"]},
            400,
            "invalid_params",
            "unknown transcode type 'mp5_ultra'",
        ),
        ({"input_bucket": "input"}, 400, "invalid_request", "input_key is missing"),
        ({"input_bucket": "input", "input_key": "../etc/passwd"}, 400, "invalid_key", "'..'"),
        ({"input_bucket": "input", "input_key": "/etc/passwd"}, 400, "invalid_key", "absolute"),
        (
            {"input_bucket": "input", "input_key": "nope.mp4"},
            404,
            "object_not_found",
            "input/nope.mp4",
        ),
        (
            {"input_bucket": "input", "input_key": "v.mp4", "kind": "nonsense"},
            400,
            "unknown_kind",
            "unknown task kind",
        ),
        (
            {"input_bucket": "input", "input_key": "v.mp4", "transcode_types": []},
            400,
            "invalid_request",
            "empty",
        ),
        (
            {"input_bucket": "input", "input_key": "v.mp4", "colour": "red"},
            422,
            "invalid_request",
            "unknown field 'colour'",
        ),
    ],
)
def test_add_rejects_bad_requests(
    api: TestClient, body: dict[str, object] | None, status: int, code: str, needle: str
) -> None:
    _upload(api, "v.mp4")
    r = api.post("/api/queue/add", json=body) if body is not None else api.post("/api/queue/add")
    assert r.status_code == status, r.text
    err = _error(r)
    assert err["code"] == code
    assert needle in err["message"]
    assert api.get("/api/queue/status").json()["pending"] == 0


def test_invalid_json(api: TestClient) -> None:
    r = api.post(
        "/api/queue/add", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422
    assert "not valid JSON" in _error(r)["message"]


def test_list_filters_and_paging(api: TestClient) -> None:
    _upload(api, "v.mp4")
    ids = [
        api.post("/api/queue/add", json={"input_key": "v.mp4"}).json()["task_id"] for _ in range(5)
    ]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, object] = {"limit": 2, "status": "pending"}
        if cursor:
            params["cursor"] = cursor
        page = api.get("/api/tasks", params=params).json()
        seen += [t["id"] for t in page["tasks"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))
    today = api.get("/api/queue/status").json()["date"]
    assert api.get("/api/tasks", params={"date": today}).json()["count"] == 5
    assert api.get("/api/tasks", params={"date": "2000-01-01"}).json()["count"] == 0
    assert _error(api.get("/api/tasks", params={"status": "done"}))["code"] == "invalid_request"
    assert "YYYY-MM-DD" in _error(api.get("/api/tasks", params={"date": "22/11/2026"}))["message"]
    assert _error(api.get("/api/tasks", params={"cursor": "@@@"}))["code"] == "invalid_request"


def test_cancel_retry_clear(api: TestClient) -> None:
    _upload(api, "v.mp4")
    a, b, c = (
        api.post("/api/queue/add", json={"input_key": "v.mp4"}).json()["task_id"] for _ in range(3)
    )
    assert api.post(f"/api/tasks/{a}/cancel").json()["status"] == "cancelled"
    r = api.post(f"/api/tasks/{a}/cancel")
    assert r.status_code == 409 and _error(r)["code"] == "conflict"
    assert api.post(f"/api/tasks/{a}/retry").json()["status"] == "pending"
    r = api.post(f"/api/tasks/{b}/retry")
    assert r.status_code == 409
    assert api.post("/api/queue/clear").json()["cancelled"] == 3
    assert api.get(f"/api/tasks/{c}").json()["status"] == "cancelled"
    r = api.get("/api/tasks/doesnotexist")
    assert r.status_code == 404 and _error(r)["code"] == "task_not_found"
    assert api.get(f"/api/tasks/{a}/logs").json()["lines"] == []


def test_files_upload_download_range(api: TestClient) -> None:
    data = bytes(range(256)) * 40
    _upload(api, "dir/视频 1.mp4", data)
    r = api.get("/api/files/input/dir/视频 1.mp4")
    assert r.status_code == 200 and r.content == data
    r = api.get("/api/files/input/dir/视频 1.mp4", headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == data[10:20]
    assert _error(api.get("/api/files/input/missing.mp4"))["code"] == "object_not_found"


def test_files_rejections(api: TestClient, tmp_path: Path) -> None:
    r = api.put("/api/files/input/a%2F..%2F..%2Fescape.mp4", content=b"x")
    assert r.status_code == 400 and _error(r)["code"] == "invalid_key"
    r = api.put("/api/files/input/empty.mp4", content=b"")
    assert r.status_code == 400 and "empty" in _error(r)["message"]
    r = api.put("/api/files/input/big.mp4", content=b"x" * 1_000_001)
    assert r.status_code == 413 and _error(r)["code"] == "payload_too_large"
    r = api.put("/api/files/Bad_Bucket/x.mp4", content=b"x")
    assert r.status_code == 400 and "bucket" in _error(r)["message"]
    # nothing half-written is left behind
    leftovers = [p for p in (tmp_path / "buckets").rglob("*") if p.is_file()]
    assert leftovers == []
