"""Through the API and a real worker: submit, validate, complete, and fail bad input once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import in_process_app
from tests.docparse_samples import (
    HEADINGS,
    make_encrypted_pdf,
    make_sample_pdf,
    make_zero_page_pdf,
)


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    with in_process_app(
        tmp_path,
        monkeypatch,
        with_worker=True,
        concurrency=4,
        docparse_workers=2,
        trigger_enabled=False,
        max_attempts=3,
    ) as client:
        yield client


def _put(api: TestClient, key: str, data: bytes, tmp_path: Path) -> None:
    if not data:  # the upload endpoint refuses empty bodies; a bucket can still hold one
        empty = tmp_path / "empty"
        empty.write_bytes(b"")
        api.app.state.service.storage.put_file("input", key, empty)  # type: ignore[attr-defined]
        return
    r = api.put(f"/api/files/input/{key}", content=data)
    assert r.status_code == 201, r.text


def _add(api: TestClient, key: str, **params: Any) -> str:
    body = {"kind": "docparse", "input_bucket": "input", "input_key": key, "params": params}
    r = api.post("/api/queue/add", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["task_id"])


def _wait(api: TestClient, task_id: str, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task: dict[str, Any] = api.get(f"/api/tasks/{task_id}").json()
        if task["status"] in ("completed", "failed", "cancelled"):
            return task
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} did not finish: {task}")


def test_docparse_through_the_api(api: TestClient, tmp_path: Path) -> None:
    pdf = make_sample_pdf(tmp_path / "report.pdf")
    _put(api, "papers/report.pdf", pdf.read_bytes(), tmp_path)

    # params are validated at submit: a clear 400, nothing queued
    r = api.post(
        "/api/queue/add",
        json={"kind": "docparse", "input_key": "papers/report.pdf", "params": {"ocr": "maybe"}},
    )
    assert r.status_code == 400
    assert "ocr" in r.json()["error"]["message"]
    r = api.post(
        "/api/queue/add",
        json={"kind": "docparse", "input_key": "papers/report.pdf", "params": {"pages": "0-1"}},
    )
    assert r.status_code == 400 and "page" in r.json()["error"]["message"]

    task = _wait(api, _add(api, "papers/report.pdf", pages="2-3", engine="lite"))
    assert task["status"] == "completed", task
    names = {o["name"]: o for o in task["outputs"]}
    assert names["markdown"]["key"] == "papers/report/report.md"
    assert names["content_list"]["meta"]["pages"] == 2
    md = api.get("/api/files/output/papers/report/report.md").text
    assert f"# {HEADINGS[1]}\n" in md and "| Alice | 91 | Paris |" in md
    assert any(n.startswith("images/") for n in names)
    metrics = api.get("/metrics").text
    gauge = [ln for ln in metrics.splitlines() if ln.startswith("conveyor_docparse_pages_per")]
    assert gauge and float(gauge[0].split()[-1]) > 0, gauge


def test_bad_inputs_fail_once_with_a_reason(api: TestClient, tmp_path: Path) -> None:
    good = make_sample_pdf(tmp_path / "good.pdf").read_bytes()
    cases = {
        "empty.pdf": (b"", "the input is empty (0 bytes)"),
        "notes.pdf": (b"just some text, not a PDF\n" * 10, "is not a PDF"),
        "locked.pdf": (
            make_encrypted_pdf(tmp_path / "locked.pdf").read_bytes(),
            "encrypted and needs a password",
        ),
        "cut.pdf": (good[: len(good) // 3], "damaged"),
        "blank.pdf": (make_zero_page_pdf(tmp_path / "blank.pdf").read_bytes(), "no pages"),
    }
    ids = {}
    for name, (data, _) in cases.items():
        _put(api, f"bad/{name}", data, tmp_path)
        ids[name] = _add(api, f"bad/{name}")
    for name, (_, reason) in cases.items():
        task = _wait(api, ids[name])
        assert task["status"] == "failed", (name, task)
        assert task["attempts"] == 1, f"{name} was retried"
        assert reason in task["error"], (name, task["error"])
        assert task["error_code"] == "invalid_input"
        assert "/tmp" not in task["error"] and "Traceback" not in task["error"]
    assert api.get("/api/files/output/bad/empty/empty.md").status_code == 404
