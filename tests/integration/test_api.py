"""The REST API on the embedded engines, in-process (no worker running)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conveyor.config import load_settings
from conveyor.server.app import create_app
from conveyor.server.runtime import Runtime
from tests.conftest import in_process_app


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    with in_process_app(tmp_path, monkeypatch, max_upload_bytes=1_000_000) as client:
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


def test_add_validates_the_body_before_looking_at_storage(api: TestClient) -> None:
    """Issue 18: an unknown type and a missing input: the answer names the type (400),
    not the input (404); the input is looked for only once the body is valid."""
    body = {"input_bucket": "input", "input_key": "missing.mp4", "transcode_types": ["mp5_ultra"]}
    r = api.post("/api/queue/add", json=body)
    assert r.status_code == 400, r.text
    err = _error(r)
    assert err["code"] == "invalid_params"
    assert "unknown transcode type 'mp5_ultra'" in err["message"]
    assert "missing.mp4" not in err["message"]
    # a bad param of the kind, too
    r = api.post(
        "/api/queue/add",
        json={**body, "transcode_types": ["hls"], "params": {"segment_seconds": 0}},
    )
    assert r.status_code == 400 and _error(r)["code"] == "invalid_params", r.text
    assert "segment_seconds" in _error(r)["message"]
    # a valid body with a missing input is still 404 about the input
    r = api.post("/api/queue/add", json={**body, "transcode_types": ["hls"]})
    assert r.status_code == 404 and _error(r)["code"] == "object_not_found", r.text
    assert "input/missing.mp4" in _error(r)["message"]
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


# a stream's files as the transcode kind writes them: name, the type its output records
STREAM_FILES = {
    "clip/hls/master.m3u8": "application/vnd.apple.mpegurl",
    "clip/hls/360p/index.m3u8": "application/vnd.apple.mpegurl",
    "clip/hls/360p/seg_00000.ts": "video/mp2t",
    "clip/dash/manifest.mpd": "application/dash+xml",
    "clip/dash/init-0.m4s": "video/mp4",
    "clip/dash/chunk-0-00001.m4s": "video/iso.segment",
    "clip/hls-fmp4/360p/init.mp4": "video/mp4",
}
SEGMENTS = ("clip/hls/360p/seg_00000.ts", "clip/dash/chunk-0-00001.m4s")


def _stream_body(key: str) -> bytes:
    if key.endswith(".m3u8"):
        return b"#EXTM3U\n#EXT-X-VERSION:3\n#EXTINF:4.0,\nseg_00000.ts\n#EXT-X-ENDLIST\n"
    if key.endswith(".mpd"):
        return b'<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011"/>'
    return bytes(range(256)) * 8


def test_stream_files_served_with_their_types_and_range(api: TestClient) -> None:
    """The local store keeps no type and guesses .ts as Qt's translation files: the
    download path serves a stream's files with the types the outputs record, and a
    segment's ``Range: bytes=0-99`` gets 206 and 100 bytes."""
    for key, want in STREAM_FILES.items():
        # uploaded with no type (a local store would keep none anyway)
        r = api.put(f"/api/files/output/{key}", content=_stream_body(key))
        assert r.status_code == 201, r.text
        r = api.get(f"/api/files/output/{key}")
        assert r.status_code == 200 and r.content == _stream_body(key), key
        assert r.headers["content-type"] == want, key
    for key in SEGMENTS:
        r = api.get(f"/api/files/output/{key}", headers={"Range": "bytes=0-99"})
        assert r.status_code == 206, key
        assert r.content == _stream_body(key)[:100] and len(r.content) == 100
        assert r.headers["content-range"] == f"bytes 0-99/{len(_stream_body(key))}"
        assert r.headers["content-type"] == STREAM_FILES[key]
    # any other file keeps its guessed type
    _upload(api, "doc.pdf", b"%PDF-1.4 x")
    assert api.get("/api/files/input/doc.pdf").headers["content-type"] == "application/pdf"


def test_stream_files_through_the_s3_redirect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On S3 a segment is a redirect to a presigned URL, which answers ``Range`` with 206
    and the type the object was stored with; playlists and manifests are served by the
    API itself, so the segments they name relative to themselves resolve to the API's
    path (a presigned URL's folder is not readable)."""
    import httpx

    from tests.s3server import require_server

    s3 = require_server()
    s3.empty_buckets()
    monkeypatch.setenv("CONVEYOR_CONFIG", str(tmp_path / "none.yaml"))
    settings = load_settings(data_dir=tmp_path, storage_url=s3.storage_url())
    runtime = Runtime.build(settings, with_worker=False, with_trigger=False)
    with TestClient(create_app(runtime)) as api:
        for key, ctype in STREAM_FILES.items():
            # as the worker stores an output: with the type it records
            r = api.put(
                f"/api/files/output/{key}",
                content=_stream_body(key),
                headers={"content-type": ctype},
            )
            assert r.status_code == 201, r.text
        for key, want in STREAM_FILES.items():
            r = api.get(f"/api/files/output/{key}", follow_redirects=False)
            if key.endswith((".m3u8", ".mpd")):
                assert r.status_code == 200, (key, r.status_code)
                assert r.content == _stream_body(key)
                assert r.headers["content-type"] == want, key
                continue
            assert r.status_code == 307, (key, r.status_code)
            location = r.headers["location"]
            assert location.startswith(s3.endpoint_url), location
            got = httpx.get(location, headers={"Range": "bytes=0-99"}, timeout=30)
            assert got.status_code == 206, (key, got.status_code, got.text[:200])
            assert got.content == _stream_body(key)[:100]
            assert got.headers["content-type"] == want, key
        # a playlist's relative segment resolves to the API's path, not S3's
        playlist = api.get("/api/files/output/clip/hls/360p/index.m3u8")
        segment = httpx.URL(str(playlist.url)).join("seg_00000.ts")
        assert segment.path == "/api/files/output/clip/hls/360p/seg_00000.ts"
        # a missing playlist is still a 404
        r = api.get("/api/files/output/clip/hls/none.m3u8")
        assert r.status_code == 404 and _error(r)["code"] == "object_not_found"


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
