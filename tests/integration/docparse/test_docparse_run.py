"""The lite engine end to end on generated PDFs: text layer, scanned copy, images."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from conveyor.processors.docparse import DocparseProcessor
from conveyor.processors.docparse.lite import LiteSummary
from tests.docparse_samples import (
    BORDERLESS,
    BULLETS,
    CAPTIONS,
    CHINESE,
    EQUATIONS,
    HEADINGS,
    INLINE_MATH,
    INTRO,
    LEFT,
    MATH_PROSE,
    MERGED_HTML,
    PROSE,
    REFERENCE,
    RIGHT,
    TABLE,
    TITLE,
    WARNING_BOX,
    known_words,
    make_borderless_pdf,
    make_captioned_pdf,
    make_equations_pdf,
    make_landscape_pdf,
    make_merged_table_pdf,
    make_sample_pdf,
    make_scanned_copy,
    make_shaded_box_pdf,
)
from tests.integration.docparse.conftest import Harness, Recorder, Settings


def test_text_pdf_to_markdown_content_list_and_images(harness: Harness, sample_pdf: Path) -> None:
    rec = Recorder()
    outputs = harness.run(sample_pdf, recorder=rec)
    md = harness.markdown(outputs)
    items = harness.content_list(outputs)

    # headings: the title is level 1, the numbered sections level 2
    assert f"# {TITLE}\n" in md
    for h in HEADINGS:
        assert f"\n## {h}\n" in md, h
    # the ruled table, cell by cell, in Markdown and as HTML in the content list
    assert "| Name | Score | City |" in md and "| Bob | 78 | Berlin |" in md
    tables = [i for i in items if i["type"] == "table"]
    assert len(tables) == 1
    for row in TABLE:
        assert "<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" in tables[0]["table_body"]
    # the Chinese line, exactly
    assert CHINESE in md
    # the embedded figure: a JPEG under images/, referenced from the Markdown;
    # the table gets a picture of itself too, as MinerU's content list has
    images = {o.name: o for o in outputs if o.name.startswith("images/")}
    img_items = [i for i in items if i["type"] == "image"]
    assert len(img_items) == 1
    figure = img_items[0]["img_path"]
    assert set(images) == {figure, tables[0]["img_path"]}
    for out in images.values():
        jpeg = harness.local(out)
        assert jpeg.read_bytes()[:3] == b"\xff\xd8\xff" and jpeg.stat().st_size > 1000
    assert f"![]({figure})" in md

    # content-list fields, MinerU's shape
    for item in items:
        assert item["type"] in ("text", "table", "image")
        assert isinstance(item["page_idx"], int) and 0 <= item["page_idx"] < 3
        assert len(item["bbox"]) == 4 and all(0 <= v <= 1000 for v in item["bbox"])
        assert item["bbox"][0] < item["bbox"][2] and item["bbox"][1] < item["bbox"][3]
    titles = [(i["text"], i["text_level"]) for i in items if "text_level" in i]
    assert titles == [(TITLE, 1)] + [(h, 2) for h in HEADINGS]
    assert {i["page_idx"] for i in items if i["type"] == "table"} == {2}

    # reading order: the left column's lines all come before the right column's
    texts = [i.get("text", "") for i in items]
    joined = "\n".join(texts)
    positions = [joined.index(line) for line in [HEADINGS[1], *LEFT, *RIGHT]]
    assert positions == sorted(positions), "two-column page read column by column"
    order = [texts.index(t) for t in (TITLE, HEADINGS[0], HEADINGS[1], HEADINGS[2], HEADINGS[3])]
    assert order == sorted(order)
    assert texts.index(HEADINGS[2]) < items.index(tables[0]) < texts.index(HEADINGS[3])

    # outputs record the page count for the pages/s gauge; progress went page by page
    assert {o.name: o.meta.get("pages") for o in outputs if "pages" in o.meta} == {
        "markdown": 3,
        "content_list": 3,
    }
    pages = [m for _, phase, m in rec.progress if phase == "parse" and m.startswith("page ")]
    assert [m.split()[1] for m in pages] == ["1/3", "2/3", "3/3"]
    assert rec.progress[-1][0] == 100.0
    keys = harness.published()
    assert "docs/report/report.md" in keys and "docs/report/report_content_list.json" in keys


def _words(text: str) -> set[str]:
    return {w.lower() for w in re.findall(r"[A-Za-z]+|\d+", text)}


def test_scanned_copy_is_ocrd_with_high_recall(
    harness: Harness, scanned_pdf: Path, with_tesseract: None
) -> None:
    rec = Recorder()
    outputs = harness.run(scanned_pdf, recorder=rec)
    md = harness.markdown(outputs)
    items = harness.content_list(outputs)
    found = _words(md)
    expected = [w.lower() for w in known_words()]
    hits = sum(1 for w in expected if w in found)
    recall = hits / len(expected)
    print(f"OCR recall on the scanned copy: {hits}/{len(expected)} = {recall:.3f}")
    assert recall > 0.95, sorted(set(expected) - found)
    assert "你好世界" in md.replace(" ", "")
    assert any("Pages: 0 with a text layer, 3 scanned, 3 OCR'd" in line for line in rec.logs)
    # the grid of the scanned table is found in the bitmap and its cells filled by OCR
    tables = [i for i in items if i["type"] == "table"]
    assert len(tables) == 1 and "<td>Alice</td>" in tables[0]["table_body"]
    assert tables[0]["img_path"] in {o.name for o in outputs}
    # headings from the bitmap: sizes estimated from cap heights, levels as on the text copy
    assert md.startswith(f"# {TITLE}\n")
    for h in HEADINGS:
        assert f"\n## {h}\n" in md, h
    assert all(i["page_idx"] in (0, 1, 2) for i in items)


def test_a_figure_on_a_scanned_page_is_cut_out(
    harness: Harness, sample_pdf: Path, scanned_pdf: Path, with_tesseract: None
) -> None:
    """The picture inside the page bitmap, where the text copy has an image object:
    the same place (within 1 % of the page), cropped to a JPEG, nothing else taken."""
    text_items = harness.content_list(harness.run(sample_pdf))
    outputs = harness.run(scanned_pdf, ocr_langs=["eng"])
    items = harness.content_list(outputs)
    (on_text,) = [i for i in text_items if i["type"] == "image"]
    (on_scan,) = [i for i in items if i["type"] == "image"]  # none on the text-only pages
    assert on_scan["page_idx"] == on_text["page_idx"] == 2
    assert all(abs(a - b) <= 10 for a, b in zip(on_scan["bbox"], on_text["bbox"], strict=True)), (
        on_scan["bbox"],
        on_text["bbox"],
    )
    with Image.open(harness.local(harness.output(outputs, on_scan["img_path"]))) as im:
        assert im.format == "JPEG" and 1.3 < im.width / im.height < 1.7, im.size  # 240 x 160
    assert f"![]({on_scan['img_path']})" in harness.markdown(outputs)


def test_ocr_off_keeps_scans_as_images(harness: Harness, scanned_pdf: Path) -> None:
    outputs = harness.run(scanned_pdf, ocr="off", pages="2")
    items = harness.content_list(outputs)
    assert [i["type"] for i in items] == ["image"]
    assert items[0]["page_idx"] == 1
    assert items[0]["bbox"] == [0, 0, 1000, 1000]


def test_page_range_and_formats(harness: Harness, sample_pdf: Path) -> None:
    outputs = harness.run(sample_pdf, pages="3", formats=["content_list"])
    assert [o.name for o in outputs if not o.name.startswith("images/")] == ["content_list"]
    items = harness.content_list(outputs)
    assert {i["page_idx"] for i in items} == {2}
    assert items[0] == {**items[0], "type": "text", "text": HEADINGS[2], "text_level": 1}


def test_params_are_validated_at_submit() -> None:
    proc = DocparseProcessor(Settings())
    from conveyor.errors import InvalidParams

    for bad in ({"ocr": "maybe"}, {"engine": "gpu"}, {"pages": "5-2"}, {"formats": []}):
        with pytest.raises(InvalidParams):
            proc.validate(bad, None)
    ok = proc.validate({"ocr_langs": ["en", "zh"], "pages": " 1-3,5 "}, None)
    assert ok["ocr_langs"] == ["eng", "chi_sim"] and ok["pages"] == "1-3,5"
    assert ok["engine"] == "auto" and ok["ocr"] == "auto"


def test_a_scanned_image_is_a_one_page_document(
    harness: Harness, scanned_pdf: Path, tmp_path: Path, with_tesseract: None
) -> None:
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument(scanned_pdf)
    png = tmp_path / "page.png"
    doc[1].render(scale=200 / 72, grayscale=True).to_pil().save(png, dpi=(200, 200))
    doc.close()
    outputs = harness.run(png, ocr_langs=["eng"])
    md = harness.markdown(outputs)
    assert "elephants" in md and "apples" in md
    assert harness.output(outputs, "markdown").meta["pages"] == 1
    assert "docs/page/page.md" in harness.published()


def test_cancel_mid_document_publishes_nothing(
    harness: Harness, sample_pdf: Path, with_tesseract: None
) -> None:
    import threading

    from conveyor.errors import TaskCancelled

    cancel = threading.Event()

    def on_progress(percent: float, phase: str, message: str) -> None:
        if phase == "parse" and message.startswith("page 1/"):
            cancel.set()

    rec = Recorder(on_progress=on_progress)
    with pytest.raises(TaskCancelled):
        harness.run(sample_pdf, recorder=rec, cancel_event=cancel, ocr="force")
    assert harness.published() == []
    assert not any(m.startswith("page 3/") for _, _, m in rec.progress)
    # the shared page processes are still good for the next task
    assert harness.markdown(harness.run(sample_pdf, pages="1")).startswith("# ")


def test_ocr_language_missing_on_the_worker_fails_retryably(
    harness: Harness, scanned_pdf: Path, with_tesseract: None
) -> None:
    from conveyor.errors import ProcessorError

    with pytest.raises(ProcessorError) as err:
        harness.run(scanned_pdf, pages="1", ocr_langs=["eng", "xyz"])
    assert err.value.retryable is True and err.value.code == "ocr_unavailable"
    assert "no xyz language data" in str(err.value)
    assert harness.published() == []


NARROW_LINES = [
    "Page 11 of 111, printed 2011-11-11",
    "Illinois filled 1,111 little jars in mid-July.",
    "Sum 1 + 1 = 2; the price was 11.11 and the id l1I1.",
]


def test_narrow_glyphs_are_not_split_into_words(harness: Harness, tmp_path: Path) -> None:
    """Ink boxes of "1", "l" and "i" leave wide gaps; only real spaces become spaces."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    path = tmp_path / "narrow.pdf"
    c = canvas.Canvas(str(path), pagesize=A4)
    for size, font in ((9, "Helvetica"), (11, "Times-Roman"), (14, "Courier")):
        c.setFont(font, size)
        for i, line in enumerate(NARROW_LINES):
            c.drawString(60, 760 - (size * 20) - i * size * 2, line)
    c.showPage()
    c.save()
    md = harness.markdown(harness.run(path))
    lines = [ln.lstrip("#").strip() for ln in md.splitlines() if ln.strip()]  # sizes make headings
    for line in NARROW_LINES:
        assert lines.count(line) == 3, (line, lines)


def test_captions_belong_to_their_table_or_figure(harness: Harness, tmp_path: Path) -> None:
    """As MinerU: in the item's *_caption, beside it in the Markdown, not loose as text."""
    outputs = harness.run(make_captioned_pdf(tmp_path / "captions.pdf"))
    items = harness.content_list(outputs)
    md = harness.markdown(outputs)
    assert [i["table_caption"] for i in items if i["type"] == "table"] == [
        [c] for c in CAPTIONS["table"]
    ]
    assert [i["image_caption"] for i in items if i["type"] == "image"] == [
        [c] for c in CAPTIONS["image"]
    ]
    texts = [i["text"] for i in items if i["type"] == "text"]
    assert not set(texts) & {*CAPTIONS["table"], *CAPTIONS["image"]}, texts
    assert any(t.startswith(REFERENCE) for t in texts), texts  # names a figure: a paragraph
    assert [i["text"] for i in items if "text_level" in i] == ["Captions"]  # bold caption too
    # Markdown: a table's caption above it, a figure's below it
    assert f"{CAPTIONS['table'][0]}\n\n| Name | Score | City |" in md
    assert f"{CAPTIONS['table'][1]}\n\n| Name | Score | City |" in md
    for caption in CAPTIONS["image"]:
        assert re.search(r"!\[\]\(images/[0-9a-f]{64}\.jpg\)\n\n" + re.escape(caption), md), md


def test_captions_of_tables_on_a_scanned_page(
    harness: Harness, tmp_path: Path, with_tesseract: None
) -> None:
    scan = make_scanned_copy(make_captioned_pdf(tmp_path / "c.pdf"), tmp_path / "scan.pdf")
    items = harness.content_list(harness.run(scan, ocr_langs=["eng", "chi_sim"]))
    captions = [i["table_caption"] for i in items if i["type"] == "table"]
    assert captions[0] == [CAPTIONS["table"][0]], captions
    (chinese,) = captions[1]  # tesseract may read the full-width colon as ":"
    assert chinese.startswith("表 2") and "城市得分" in chinese, chinese


def test_a_page_that_cannot_be_parsed_is_named_and_the_rest_published(
    harness: Harness, sample_pdf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One bad page must not lose the others, nor pass unnoticed by a pipeline."""
    import conveyor.processors.docparse as docparse

    real = docparse.run_pages

    def with_a_missing_page(path: Path, pages: list[int], **kw: Any) -> LiteSummary:
        # the fault: PDFium is asked for a page the file does not have, in a page process
        return real(path, [*pages[:-1], 41], **kw)

    monkeypatch.setattr(docparse, "run_pages", with_a_missing_page)
    rec = Recorder()
    outputs = harness.run(sample_pdf, recorder=rec)
    assert any(ln.startswith("page 42: could not be parsed: ") for ln in rec.logs), rec.logs
    assert "Pages: 2 with a text layer, 0 scanned, 0 OCR'd, 1 failed" in rec.logs
    for name in ("markdown", "content_list"):
        assert harness.output(outputs, name).meta["failed_pages"] == [42]
    assert CHINESE in harness.markdown(outputs)  # page 1 is still there
    monkeypatch.undo()
    clean = harness.run(sample_pdf)
    assert "failed_pages" not in harness.output(clean, "markdown").meta


def test_a_landscape_page_reads_left_to_right_with_boxes_as_shown(
    harness: Harness, tmp_path: Path
) -> None:
    """Content drawn turned and shown upright by /Rotate (pdflscape): lines, headings, the
    table and an upright figure; boxes on the page as shown (landscape, title top-left)."""
    outputs = harness.run(make_landscape_pdf(tmp_path / "landscape.pdf"))
    md = harness.markdown(outputs)
    items = harness.content_list(outputs)
    assert f"# {TITLE}\n" in md and f"\n## {HEADINGS[2]}\n" in md
    assert " ".join(INTRO) in md  # three lines, one paragraph, words in order
    assert "| Name | Score | City |" in md and "| Bob | 78 | Berlin |" in md
    title = next(i for i in items if i.get("text") == TITLE)
    assert title["bbox"][0] < 100 and title["bbox"][1] < 150, title["bbox"]  # top-left
    (table,) = [i for i in items if i["type"] == "table"]
    (figure,) = [i for i in items if i["type"] == "image"]
    assert table["bbox"][2] < figure["bbox"][0], (table["bbox"], figure["bbox"])  # side by side
    with Image.open(harness.local(harness.output(outputs, figure["img_path"]))) as im:
        assert im.width > im.height, im.size  # 240 x 160 as drawn, not turned


def test_a_page_turned_the_wrong_way_still_reads(harness: Harness, tmp_path: Path) -> None:
    """A text page given /Rotate 90 or 180 by mistake: text in order, boxes as shown."""
    import pypdfium2 as pdfium

    src = make_sample_pdf(tmp_path / "s.pdf")
    for turn in (90, 180, 270):
        pdf = pdfium.PdfDocument(src)
        pdf[0].set_rotation(turn)
        pdf.save(tmp_path / f"turned{turn}.pdf")
        pdf.close()
        items = harness.content_list(harness.run(tmp_path / f"turned{turn}.pdf", pages="1"))
        title = next(i for i in items if i.get("text") == TITLE)
        assert [i["text"] for i in items if i.get("text_level") == 2] == [HEADINGS[0]], turn
        assert CHINESE in [i.get("text") for i in items], turn
        x0, y0, x1, _y1 = title["bbox"]
        # the title line sits at the top of the unturned page: turned, it is on the right
        # (90), at the bottom (180) or on the left (270) of the page as shown
        expected = {90: x0 > 800, 180: y0 > 800, 270: x1 < 200}[turn]
        assert expected, (turn, title["bbox"])


def test_a_scan_lying_on_its_side_is_stood_upright(
    harness: Harness, tmp_path: Path, with_tesseract: None
) -> None:
    """Pages fed into the scanner sideways or upside down: OCR'd upright (tesseract's
    orientation detection when the first reading is poor), boxes on the page as shown."""
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument(make_sample_pdf(tmp_path / "s.pdf"))
    page, table_page = (
        pdf[i].render(scale=200 / 72, grayscale=True).to_pil().convert("L") for i in (0, 2)
    )
    pdf.close()
    turns = [90, 180, 270]  # anticlockwise, as a page can lie on the scanner
    pages = [page.rotate(t, expand=True) for t in turns] + [table_page.rotate(270, expand=True)]
    pages[0].save(
        tmp_path / "sideways.pdf",
        format="PDF",
        save_all=True,
        append_images=pages[1:],
        resolution=200,
    )
    items = harness.content_list(harness.run(tmp_path / "sideways.pdf", ocr_langs=["eng"]))
    first_page = _words(" ".join([TITLE, HEADINGS[0], *INTRO]))
    for idx, turn in enumerate(turns):
        text = " ".join(i.get("text", "") for i in items if i["page_idx"] == idx)
        found = _words(text) & first_page
        assert len(found) / len(first_page) > 0.95, (turn, sorted(first_page - found))
        title = next(i for i in items if i["page_idx"] == idx and i.get("text") == TITLE)
        x0, y0, x1, _y1 = title["bbox"]
        # the title, at the top of the upright page, is on the left (page turned a
        # quarter anticlockwise), at the bottom (upside down) or on the right (a
        # quarter clockwise, which tesseract reads fluently with boxes on end)
        expected = {90: x1 < 200 and y0 > 200, 180: y0 > 800, 270: x0 > 800}[turn]
        assert expected, (turn, title["bbox"])
        assert [i["text"] for i in items if i["page_idx"] == idx and i.get("text_level")][:2] == [
            TITLE,
            HEADINGS[0],
        ], turn
    # a quarter clockwise: the table reads row by row, not transposed
    (table,) = [i for i in items if i["page_idx"] == 3 and i["type"] == "table"]
    for row in TABLE:
        assert "<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" in table["table_body"]
    assert [i["text"] for i in items if i["page_idx"] == 3 and i.get("text_level")] == [
        HEADINGS[2],
        HEADINGS[3],
    ]


def test_tables_without_vertical_rules(harness: Harness, tmp_path: Path) -> None:
    """No rules, booktabs rules, Chinese cells: found by their columns; prose and
    lists around them stay text."""
    outputs = harness.run(make_borderless_pdf(tmp_path / "borderless.pdf"))
    items = harness.content_list(outputs)
    md = harness.markdown(outputs)
    tables = [i["table_body"] for i in items if i["type"] == "table"]
    expected = [BORDERLESS[k] for k in ("money", "booktabs", "chinese", "numbers")]
    assert len(tables) == 4, md
    for body, rows in zip(tables, expected, strict=True):
        for row in rows:
            assert "<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" in body, (row, body)
    assert "| Region | 2024 | 2025 | Change |" in md and "| East | 2,311 | 2,096 | -9% |" in md
    texts = [i["text"] for i in items if i["type"] == "text"]
    assert " ".join(PROSE) in texts
    for item in BULLETS:
        assert any(f"• {item}" in t for t in texts), (item, texts)
        assert any(f". {item}" in t for t in texts), (item, texts)
    page1 = [i for i in items if i["page_idx"] == 0]
    assert page1[-1]["text"] == "A closing sentence ends the page."
    # reading order: prose, the first table, the lists, the other two tables
    kinds = [i["type"] for i in page1]
    assert kinds[0] == "text" and kinds[1] == "table" and kinds[-2] == "table", kinds
    # code lined up with spaces in a fixed-pitch font stays text
    code = " ".join(i.get("text", "") for i in items if i["page_idx"] == 1)
    assert "OtherStruct" in code and not any("OtherStruct" in t for t in tables)


def test_merged_cells_keep_their_spans(
    harness: Harness, tmp_path: Path, with_tesseract: None
) -> None:
    """A header cell over two columns and one over two rows: rowspan/colspan in the
    HTML, the HTML in the Markdown (pipes cannot span), on the text page and its scan."""
    pdf = make_merged_table_pdf(tmp_path / "merged.pdf")
    outputs = harness.run(pdf)
    (table,) = [i for i in harness.content_list(outputs) if i["type"] == "table"]
    assert table["table_body"] == MERGED_HTML
    assert MERGED_HTML in harness.markdown(outputs)
    scan = make_scanned_copy(pdf, tmp_path / "merged-scan.pdf")
    (table,) = [
        i
        for i in harness.content_list(harness.run(scan, ocr_langs=["eng"]))
        if i["type"] == "table"
    ]
    assert table["table_body"] == MERGED_HTML


def test_displayed_formulas_are_equations(harness: Harness, tmp_path: Path) -> None:
    """Lines mostly made of mathematics become equation items (their characters, and a
    picture); a sentence with a little inline mathematics stays text."""
    outputs = harness.run(make_equations_pdf(tmp_path / "eq.pdf"))
    items = harness.content_list(outputs)
    md = harness.markdown(outputs)
    equations = [i for i in items if i["type"] == "equation"]
    assert [e["text"] for e in equations] == [f"$$\n{eq}\n$$" for eq in EQUATIONS], items
    for eq in equations:
        assert eq["text_format"] == "unicode" and eq["img_path"].startswith("images/")
        assert eq["img_path"] in {o.name for o in outputs}
    texts = [i["text"] for i in items if i["type"] == "text"]
    assert texts == [" ".join(MATH_PROSE), INLINE_MATH], texts
    assert f"$$\n{EQUATIONS[0]}\n$$" in md


def test_tinted_paper_and_shaded_boxes_stay_text(
    harness: Harness, tmp_path: Path, with_tesseract: None
) -> None:
    """Neither a grey page (aged paper, a grey photocopy) nor a light grey box of text
    is a picture: their words stay in the text."""
    pdf = make_shaded_box_pdf(tmp_path / "box.pdf")
    for paper in (255, 195):
        scan = make_scanned_copy(pdf, tmp_path / f"box-{paper}.pdf", paper=paper)
        items = harness.content_list(harness.run(scan, ocr_langs=["eng"]))
        assert [i for i in items if i["type"] == "image"] == [], (paper, items)
        text = " ".join(i.get("text", "") for i in items)
        for line in WARNING_BOX:
            assert line in text, (paper, line, text)
