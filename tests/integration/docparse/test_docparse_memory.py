"""A 500-page PDF through the processor: memory stays bounded (printed, and under 1 GiB)."""

from __future__ import annotations

from pathlib import Path

import pypdfium2 as pdfium
import pytest

from tests.docparse_samples import make_sample_pdf, make_scanned_copy
from tests.integration.docparse.conftest import Harness, Recorder
from tests.rss import TreeRss

PAGES = 500
SCANNED = 4


@pytest.mark.slow
def test_500_pages_with_bounded_memory(
    harness: Harness, tmp_path: Path, with_tesseract: None
) -> None:
    doc = pdfium.PdfDocument(make_sample_pdf(tmp_path / "text.pdf", repeat=PAGES // 3 + 1))
    for i in range(len(doc) - 1, PAGES - SCANNED - 1, -1):
        doc.del_page(i)
    src = make_sample_pdf(tmp_path / "src.pdf", repeat=2)
    doc.import_pages(
        pdfium.PdfDocument(make_scanned_copy(src, tmp_path / "scan.pdf")), [0, 1, 2, 3]
    )
    doc.save(tmp_path / "long.pdf")
    assert len(doc) == PAGES

    rec = Recorder()
    with TreeRss() as rss:
        outputs = harness.run(tmp_path / "long.pdf", recorder=rec, ocr_langs=["eng"])
    peak_mib = rss.peak_kib / 1024
    print(f"500-page PDF: peak RSS of the test process + page processes {peak_mib:.0f} MiB")
    assert peak_mib < 1024, f"peak {peak_mib:.0f} MiB over {rss.peak_procs} processes"
    assert harness.output(outputs, "markdown").meta["pages"] == PAGES
    failed = [ln for ln in rec.logs if "could not be parsed" in ln]
    assert not failed, failed[:5]
    summary = [ln for ln in rec.logs if ln.startswith("Pages: ")]
    assert summary == [
        f"Pages: {PAGES - SCANNED} with a text layer, {SCANNED} scanned, {SCANNED} OCR'd, 0 failed"
    ], rec.logs
    items = harness.content_list(outputs)
    assert max(i["page_idx"] for i in items) == PAGES - 1
    tables = sum(1 for i in items if i["type"] == "table")
    assert tables == (PAGES - SCANNED) // 3 + 1, (tables, rec.logs)
    # every page, scanned ones too, carries a "Page N" footer, and each is left out
    # (a page number read as "Page 1 1" once kept ten of them)
    assert f"Running headers and footers left out: {PAGES}" in rec.logs, rec.logs
    assert len([m for _, ph, m in rec.progress if ph == "parse" and m.startswith("page ")]) >= 100
