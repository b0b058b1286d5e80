"""The console's add-task page offers docparse, in both languages, and submits its options."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from conveyor.models import Trigger
from tests.conftest import in_process_app


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    with in_process_app(tmp_path, monkeypatch) as client:
        yield client


def service(app: TestClient) -> Any:
    return app.app.state.service  # type: ignore[attr-defined]


def test_add_task_page_offers_docparse_in_both_languages(app: TestClient) -> None:
    en = app.get("/admin/tasks/new", headers={"Accept-Language": "en"}).text
    assert 'name="kind" value="docparse"' in en and "Document parsing" in en
    assert 'name="dp_langs" value="chi_sim" checked' in en
    assert "application/pdf" in en
    zh = app.get("/admin/tasks/new", headers={"Accept-Language": "zh-CN"}).text
    assert "文档解析" in zh and "简体中文" in zh and "所有页面" in zh


def test_docparse_form_submits_its_params(app: TestClient) -> None:
    assert app.put("/api/files/input/papers/a.pdf", content=b"%PDF-1.4\n").status_code == 201
    form = {
        "kind": "docparse",
        "bucket": "input",
        "key": "papers/a.pdf",
        "dp_engine": "lite",
        "dp_ocr": "force",
        "dp_langs": ["eng"],
        "dp_formats": ["markdown"],
        "dp_pages": "1-2",
        # the transcode boxes stay in the page, hidden; they must not leak into the task
        "transcode_types": ["thumbnail"],
    }
    r = app.post("/admin/tasks/new", data=form, follow_redirects=False)
    assert r.status_code == 303, r.text
    task = service(app).get(r.headers["location"].rsplit("/", 1)[1])
    assert task.kind == "docparse" and task.trigger == Trigger.CONSOLE
    assert task.params == {
        "engine": "lite",
        "ocr": "force",
        "ocr_langs": ["eng"],
        "formats": ["markdown"],
        "pages": "1-2",
        "output_prefix": None,
        "timeout_s": None,
    }
    # a bad page range comes back on the form with the reason, the docparse fieldset shown
    r = app.post("/admin/tasks/new", data={**form, "dp_pages": "9-3"})
    assert r.status_code == 400 and "page range" in r.text
    assert 'data-kind="docparse"' in r.text and 'value="9-3"' in r.text
