"""The mineru engine over HTTP, against a local fake of mineru-api (the models are not here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conveyor.errors import ProcessorError
from tests.integration.docparse.conftest import Harness, Recorder, Settings
from tests.integration.docparse.fake_mineru import FakeMineru


def test_mineru_engine_posts_to_file_parse_and_keeps_the_names(
    harness: Harness, sample_pdf: Path
) -> None:
    with FakeMineru() as fake:
        rec = Recorder()
        outputs = harness.run(
            sample_pdf,
            settings=Settings(mineru_api_url=fake.url),
            recorder=rec,
            engine="mineru",
            pages="2-3",
            ocr="force",
        )
    [req] = fake.requests
    assert req["files"] == ["report.pdf"]
    fields = req["fields"]
    assert fields["start_page_id"] == "1" and fields["end_page_id"] == "2"
    assert fields["parse_method"] == "ocr" and fields["lang_list"] == "ch"
    assert fields["backend"] == "pipeline"
    assert fields["return_md"] == fields["return_content_list"] == fields["return_images"] == "true"

    keys = sorted(o.key for o in outputs)
    assert keys == [
        "docs/report/images/fig0.jpg",
        "docs/report/report.md",
        "docs/report/report_content_list.json",
    ]
    md = harness.markdown(outputs)
    assert md.startswith("# report (parsed by fake MinerU)") and "![](images/fig0.jpg)" in md
    items = harness.content_list(outputs)
    assert [i["page_idx"] for i in items if i["type"] == "text"] == [1, 2]
    assert "Alice" in items[1]["text"]
    jpeg = harness.local(harness.output(outputs, "images/fig0.jpg")).read_bytes()
    assert jpeg[:3] == b"\xff\xd8\xff"
    assert harness.output(outputs, "markdown").meta == {"engine": "mineru-api fake-2.5", "pages": 2}
    assert any("MinerU (mineru-api fake-2.5) parsed the document" in ln for ln in rec.logs)


def test_auto_sends_scans_to_mineru_and_falls_back_to_lite(
    harness: Harness, scanned_pdf: Path, with_tesseract: None
) -> None:
    with FakeMineru(fail=True) as fake:
        rec = Recorder()
        outputs = harness.run(
            scanned_pdf, settings=Settings(mineru_api_url=fake.url), recorder=rec, pages="3"
        )
    assert len(fake.requests) == 1, "auto tried MinerU first for a scanned page"
    assert any("falling back to the lite engine" in ln for ln in rec.logs), rec.logs
    assert harness.output(outputs, "markdown").meta["engine"] == "lite"
    assert "Alice" in harness.markdown(outputs)


def test_auto_keeps_text_pages_on_lite(harness: Harness, sample_pdf: Path) -> None:
    with FakeMineru() as fake:
        outputs = harness.run(sample_pdf, settings=Settings(mineru_api_url=fake.url), pages="1")
    assert fake.requests == []
    assert harness.output(outputs, "content_list").meta["engine"] == "lite"


def test_mineru_asked_for_but_absent_fails_without_retry(
    harness: Harness, sample_pdf: Path
) -> None:
    with pytest.raises(ProcessorError) as err:
        harness.run(sample_pdf, settings=Settings(mineru_api_url=""), engine="mineru")
    assert err.value.retryable is False and err.value.code == "engine_unavailable"
    assert "MINERU_API_URL" in str(err.value)
    assert harness.published() == []


def test_mineru_server_error_with_engine_mineru_is_retryable(
    harness: Harness, sample_pdf: Path
) -> None:
    with FakeMineru(fail=True) as fake, pytest.raises(ProcessorError) as err:
        harness.run(sample_pdf, settings=Settings(mineru_api_url=fake.url), engine="mineru")
    assert err.value.retryable is True and "answered 500" in str(err.value)
    assert json.loads(str(err.value).split(": ", 1)[1])["error"].startswith("Failed to process")
    assert harness.published() == []
