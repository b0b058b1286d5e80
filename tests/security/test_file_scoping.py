"""Issue 13, finding 5: no file isolation between submitters.

Against a real ``conveyor up`` with auth on (API, worker and upload trigger in one
process): bob parses a PDF; alice, another submitter, tries everything the review
tried — read and overwrite bob's input, read bob's outputs (their keys are
predictable), use bob's object as her input, point ``output_prefix`` into bob's
folder, make a bucket of her own — and is refused each time, while bob reads his
own, operators keep full access, ``conveyor submit file.pdf`` still works for
alice (the upload lands under her own folder), and a file an operator drops in
the input bucket is still queued by the upload trigger.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import make_clip, wait_task

from .auth_server import AuthServer, auth_server, which_conveyor

pytestmark = pytest.mark.timeout(300)


def _pdf(path: Path, text: str) -> Path:
    from reportlab.pdfgen import canvas

    c = canvas.Canvas(str(path), pagesize=(300, 200))
    c.drawString(20, 150, text)
    c.showPage()
    c.save()
    return path


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    print("server code:", which_conveyor())
    with auth_server(tmp_path_factory.mktemp("file-scoping"), "up") as a:
        for name, role in (("alice", "submitter"), ("bob", "submitter")):
            a.token(name, role)
        a.token("ops", "operator")
        a.token("watcher", "viewer")
        yield a


@pytest.fixture(scope="module")
def bobs(api: AuthServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """bob's upload and his completed docparse task (outputs in the output bucket)."""
    pdf = _pdf(tmp_path_factory.mktemp("bob") / "payroll.pdf", "Bob's payroll, do not read")
    with api.client(api.tokens["bob"]) as c:
        key = "bob/payroll.pdf"
        up = c.put(f"/api/files/input/{key}", content=pdf.read_bytes())
        if up.status_code == 403:  # pragma: no cover - a server that scopes differently
            pytest.fail(f"bob cannot upload into his own folder: {up.text}")
        assert up.status_code == 201, up.text
        r = c.post(
            "/api/queue/add",
            json={"kind": "docparse", "input_bucket": "input", "input_key": key},
        )
        assert r.status_code == 201, r.text
        task = wait_task(c, r.json()["task_id"], timeout=120)
    assert task["status"] == "completed", task
    assert task["outputs"], task
    return {"key": key, "task": task, "pdf": pdf}


def _status(c: httpx.Client, method: str, path: str, **kw: Any) -> int:
    return c.request(method, path, **kw).status_code


def test_another_submitter_cannot_read_or_overwrite_bobs_files(
    api: AuthServer, bobs: dict[str, Any]
) -> None:
    outputs = [(o["bucket"], o["key"]) for o in bobs["task"]["outputs"]]
    with api.client(api.tokens["alice"]) as c:
        got = _status(c, "GET", f"/api/files/input/{bobs['key']}")
        assert got == 403, f"alice read bob's input: {got}"
        put = _status(c, "PUT", f"/api/files/input/{bobs['key']}", content=b"%PDF-1.4 evil")
        assert put == 403, f"alice overwrote bob's input: {put}"
        for bucket, key in outputs:
            got = _status(c, "GET", f"/api/files/{bucket}/{key}")
            assert got == 403, f"alice read bob's output {bucket}/{key}: {got}"
            put = _status(c, "PUT", f"/api/files/{bucket}/{key}", content=b"evil")
            assert put == 403, f"alice overwrote bob's output {bucket}/{key}: {put}"
    with api.client(api.tokens["bob"]) as c:
        assert c.get(f"/api/files/input/{bobs['key']}").content == bobs["pdf"].read_bytes()
        for bucket, key in outputs:
            assert _status(c, "GET", f"/api/files/{bucket}/{key}") == 200, key


def test_another_submitter_cannot_use_bobs_files_in_a_task(
    api: AuthServer, bobs: dict[str, Any], tmp_path: Path
) -> None:
    with api.client(api.tokens["alice"]) as c:
        body = {"kind": "docparse", "input_bucket": "input", "input_key": bobs["key"]}
        r = c.post("/api/queue/add", json=body)
        assert r.status_code == 403, f"alice used bob's input: {r.status_code} {r.text[:200]}"
        out = bobs["task"]["outputs"][0]
        body = {"kind": "docparse", "input_bucket": out["bucket"], "input_key": out["key"]}
        r = c.post("/api/queue/add", json=body)
        assert r.status_code == 403, f"alice used bob's output as input: {r.status_code}"
        mine = _pdf(tmp_path / "mine.pdf", "Alice's own")
        put = c.put("/api/files/input/alice/mine.pdf", content=mine.read_bytes())
        assert put.status_code == 201, put.text
        body = {
            "kind": "docparse",
            "input_bucket": "input",
            "input_key": "alice/mine.pdf",
            "params": {"output_prefix": "bob/payroll"},
        }
        r = c.post("/api/queue/add", json=body)
        assert r.status_code == 403, f"alice wrote into bob's output folder: {r.status_code}"
        assert "output_prefix" in r.text
        body["params"] = {"output_prefix": "alice/parsed"}
        ok = c.post("/api/queue/add", json=body)
        assert ok.status_code == 201, ok.text
        done = wait_task(c, ok.json()["task_id"], timeout=120)
        assert done["status"] == "completed", done
        for o in done["outputs"]:
            assert o["key"].startswith("alice/parsed/"), o
            assert c.get(f"/api/files/{o['bucket']}/{o['key']}").status_code == 200
    with api.client(api.tokens["bob"]) as c:
        for o in done["outputs"]:
            assert _status(c, "GET", f"/api/files/{o['bucket']}/{o['key']}") == 403, o


def test_a_submitter_writes_only_in_its_own_folder_of_the_two_buckets(api: AuthServer) -> None:
    with api.client(api.tokens["alice"]) as c:
        r = c.put("/api/files/input/loose.pdf", content=b"%PDF-1.4")
        assert r.status_code == 403, f"alice wrote outside her folder: {r.status_code}"
        assert "alice/" in r.json()["error"]["message"]
        r = c.put("/api/files/alices-own-bucket/x.bin", content=b"x")
        assert r.status_code == 403, f"alice made a bucket of her own: {r.status_code}"
        assert c.put("/api/files/output/alice/notes.txt", content=b"x").status_code == 201


def test_operators_keep_full_access_and_viewers_read(api: AuthServer, bobs: dict[str, Any]) -> None:
    out = bobs["task"]["outputs"][0]
    with api.client(api.tokens["ops"]) as c:
        assert _status(c, "GET", f"/api/files/input/{bobs['key']}") == 200
        assert _status(c, "GET", f"/api/files/{out['bucket']}/{out['key']}") == 200
        assert _status(c, "PUT", "/api/files/input/shared/ops.bin", content=b"x") == 201
        assert _status(c, "PUT", "/api/files/archive/ops.bin", content=b"x") == 201
    with api.client(api.tokens["watcher"]) as c:
        assert _status(c, "GET", f"/api/files/{out['bucket']}/{out['key']}") == 200
        assert _status(c, "PUT", "/api/files/input/watcher/x.bin", content=b"x") == 403


def test_outputs_of_a_task_folder_are_read_by_its_owner_only(api: AuthServer) -> None:
    dev = api.code_runner("dev")
    job = {"kind": "container", "params": {"command": ["true"]}}
    with api.client(dev) as c:
        r = c.post("/api/queue/add", json=job)
        assert r.status_code == 201, r.text
        task_id = r.json()["task_id"]
    key = f"{task_id}/model.bin"  # where a container task's output folder is saved
    with api.client(api.admin) as c:
        assert c.put(f"/api/files/output/{key}", content=b"weights").status_code == 201
    with api.client(dev) as c:
        assert _status(c, "GET", f"/api/files/output/{key}") == 200
    with api.client(api.tokens["alice"]) as c:
        got = _status(c, "GET", f"/api/files/output/{key}")
        assert got == 403, f"alice read another's task folder: {got}"


def test_the_cli_uploads_into_the_callers_folder(api: AuthServer, tmp_path: Path) -> None:
    pdf = _pdf(tmp_path / "cli-report.pdf", "Submitted from the CLI")
    out = api.cli("submit", str(pdf), "--wait", token=api.tokens["alice"])
    assert out.returncode == 0, f"conveyor submit as alice: {out.stdout}\n{out.stderr}"
    with api.client(api.tokens["alice"]) as c:
        tasks = c.get("/api/tasks").json()["tasks"]
    keys = [t["input"]["key"] for t in tasks if t["input"]]
    assert "alice/cli-report.pdf" in keys, keys


def test_the_upload_trigger_still_queues_a_dropped_file(api: AuthServer, tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "clip.mp4", width=160, height=120, seconds=1.0, audio=False)
    drop = api.srv.data_dir / "buckets" / "input" / "dropped" / "clip.mp4"
    drop.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(clip, drop)
    with api.client(api.admin) as c:
        deadline = time.monotonic() + 60
        found: list[dict[str, Any]] = []
        while not found and time.monotonic() < deadline:
            tasks = c.get("/api/tasks", params={"limit": 100}).json()["tasks"]
            found = [t for t in tasks if (t["input"] or {}).get("key") == "dropped/clip.mp4"]
            time.sleep(0.3)
        assert found, "the upload trigger did not queue the dropped file"
        assert found[0]["trigger"] == "upload"
        done = wait_task(c, found[0]["id"], timeout=120)
    assert done["status"] == "completed", done
