"""How the lite engine reads a text layer built the way real documents build it.

Each test writes the PDF operator by operator (``rawpdf``) to reproduce one
mechanism of issue 16 that reportlab's PDFs never show; the same failures on
real documents are tested in test_real_corpus.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from conveyor.processors.docparse import lite
from conveyor.processors.docparse.assemble import assemble
from tests.integration.docparse.rawpdf import box, rule, text_at, write_pdf

PROSE = (
    "the quick brown fox jumps over a lazy dog while seven wise owls watch from "
    "an old oak tree and count every leaf that falls in the cold autumn wind"
)
WORDS = re.findall(r"\w+", PROSE)


def parse(pdf: Path, tmp: Path) -> tuple[str, list[dict[str, Any]]]:
    """Every page through the page parser in this process, then the two outputs."""
    import pypdfium2 as pdfium

    n = len(pdfium.PdfDocument(pdf))
    images = tmp / "images"
    images.mkdir(exist_ok=True)
    spool = tmp / "spool.jsonl"
    with spool.open("wb") as fh:
        for idx in range(n):
            result = lite.parse_page(lite.PageJob(str(pdf), idx, str(images), "off", ("eng",)))
            assert "error" not in result, result
            fh.write(result["line"])
    assemble(spool, tmp / "out.md", tmp / "out.json")
    return (tmp / "out.md").read_text(), json.loads((tmp / "out.json").read_text())


def justified(x0: float, y: float, words: list[str], size: float, stretch: float = 0.0) -> str:
    """One justified line, each word placed on its own as dvips places them; the word
    space is a third of an em, plus ``stretch`` em."""
    widths = [len(w) * 0.5 * size for w in words]
    gap = (0.33 + stretch) * size
    out, x = [], x0
    for w, wd in zip(words, widths, strict=True):
        out.append(text_at(x, y, w, size))
        x += wd + gap
    return "".join(out)


def test_size_from_the_text_matrix(tmp_path: Path) -> None:
    """dvips sets every font at 1 pt and scales it by the text matrix: read at 1 pt, each
    word was a paragraph of its own (5,886 of 6,160 on a journal article)."""
    content = text_at(72, 700, "Results of the Survey", 16, "F2")
    y = 660.0
    for para in range(3):
        for line in range(5):
            words = [WORDS[(para * 7 + line * 5 + k) % len(WORDS)] for k in range(9)]
            content += justified(72, y, words, 10, 0.05 * line)
            y -= 12
        y -= 12
    pdf = write_pdf(tmp_path / "scaled.pdf", [content])
    _md, items = parse(pdf, tmp_path)
    texts = [i for i in items if i["type"] == "text" and "text_level" not in i]
    assert len(texts) == 3, [t["text"] for t in texts]
    assert all(len(t["text"].split()) == 45 for t in texts)
    headings = [i for i in items if i.get("text_level")]
    assert [h["text"] for h in headings] == ["Results of the Survey"]
    assert not any(i["type"] == "table" for i in items)


def test_size_through_the_ctm(tmp_path: Path) -> None:
    """A page drawn at half size and scaled up by ``cm`` reads at the size it is shown."""
    content = "q 2 0 0 2 0 0 cm\n" + text_at(36, 350, "Scaled Title", 8, "F2", matrix_scaled=False)
    y = 330.0
    for line in range(4):
        words = [WORDS[(line * 6 + k) % len(WORDS)] for k in range(8)]
        content += justified(36, y, words, 5)
        y -= 6
    content += "Q\n"
    pdf = write_pdf(tmp_path / "ctm.pdf", [content])
    _md, items = parse(pdf, tmp_path)
    headings = [i for i in items if i.get("text_level")]
    assert [h["text"] for h in headings] == ["Scaled Title"]
    texts = [i for i in items if i["type"] == "text" and "text_level" not in i]
    assert len(texts) == 1 and len(texts[0]["text"].split()) == 32


def test_hyphen_marker_joined_and_no_control_characters(tmp_path: Path) -> None:
    """PDFium marks a hyphen at a line's end as U+0002: it is the hyphen, and the word
    is joined; a glyph a font maps to a control code is left out."""
    content = (
        text_at(72, 700, "This sentence has a word that is hyph-", 10)
        + text_at(72, 688, "enated across two lines of text here.", 10)
        + text_at(72, 676, "A glyph with no meaning: \x03type\x04 stays out.", 10)
    )
    pdf = write_pdf(tmp_path / "hyphen.pdf", [content])
    md, _items = parse(pdf, tmp_path)
    assert "hyphenated across" in md
    assert not any(ord(c) < 32 and c not in "\n\t" for c in md)
    assert "type stays out" in md


def prose_lines(x: float, y: float, n: int, size: float = 10, lead: float = 12) -> str:
    out = ""
    for line in range(n):
        words = [WORDS[(line * 5 + k) % len(WORDS)] for k in range(10)]
        out += justified(x, y - line * lead, words, size)
    return out


def test_slide_frames_are_not_tables(tmp_path: Path) -> None:
    """A beamer theme draws the slide's background, header and footer bars as rectangles:
    the page became one page-sized table and its title was lost."""
    w, h = 364, 273
    slides = []
    for n in range(3):
        content = (
            box(0, 0, w, h, fill=0.95)
            + box(0, h - 20, w, 20, fill=0.8)  # navigation bar
            + box(0, 0, w, 10, fill=0.8)  # footline
            + box(0, h - 45, w, 25, fill=0.9)  # frame title bar
            + box(2, 2, w - 4, h - 4)  # a frame line around it all
            + text_at(10, h - 14, "Introduction   Results   Summary", 6)
            + text_at(10, h - 38, f"Frame title number {n + 1}", 14)
            + prose_lines(10, h - 70, 6, 9, 11)
            + text_at(10, 3, "A. Author  Short title  2006", 5)
        )
        slides.append(content)
    pdf = write_pdf(tmp_path / "slides.pdf", slides, size=(w, h))
    _md, items = parse(pdf, tmp_path)
    assert not any(i["type"] == "table" for i in items)
    texts = [i["text"] for i in items if i["type"] == "text"]
    for n in range(3):
        assert f"Frame title number {n + 1}" in texts


def test_line_numbers_in_the_margin_are_left_out(tmp_path: Path) -> None:
    """Line numbers beside every line (AAS manuscripts): read as text they made two-column
    tables with the lines they number, and a paragraph of each bare number."""
    pages = []
    for page in range(2):
        content = ""
        y = 700.0
        for line in range(30):
            number = page * 30 + line + 1
            content += text_at(50 - 3 * len(str(number)), y, str(number), 6)
            if line % 10 != 9:  # a blank line every ten: numbered all the same
                words = [WORDS[(line * 3 + k) % len(WORDS)] for k in range(11)]
                content += justified(72, y, words, 10)
            y -= 12
        pages.append(content)
    pdf = write_pdf(tmp_path / "lineno.pdf", pages)
    md, items = parse(pdf, tmp_path)
    assert not any(i["type"] == "table" for i in items)
    bare = [i for i in items if i["type"] == "text" and i["text"].strip().isdigit()]
    assert bare == []
    assert not any(w.isdigit() for w in md.split())


def test_ruled_every_fifth_row_and_spaces_in_cells(tmp_path: Path) -> None:
    """A government table ruled every five rows came out as 12 rows of five states each;
    a cell's words kept their space only where the gap was wide."""
    states = ["New York", "New Jersey", "North Dakota", "South Carolina", "West Virginia"] * 3
    x = [72, 200, 300, 400]
    top = 700.0
    content = ""
    for k in range(4):
        content += rule(x[k], top, x[k], top - 20 - 15 * 12)
    content += rule(x[0], top, x[-1], top) + rule(x[0], top - 20, x[-1], top - 20)
    content += text_at(76, top - 14, "State", 9, "F2") + text_at(204, top - 14, "Permits", 9, "F2")
    content += text_at(304, top - 14, "Denied", 9, "F2")
    for row, state in enumerate(states):
        y = top - 20 - 10 - row * 12
        content += f"BT /F1 1 Tf 9 0 0 9 76 {y} Tm ({state}) Tj ET\n"
        content += text_at(204, y, str(1000 + row * 37), 9) + text_at(304, y, str(row * 3), 9)
        if row % 5 == 4:
            content += rule(x[0], y - 3, x[-1], y - 3)
    pdf = write_pdf(tmp_path / "every5.pdf", [content])
    md, items = parse(pdf, tmp_path)
    tables = [i for i in items if i["type"] == "table"]
    assert len(tables) == 1
    body = tables[0]["table_body"]
    assert body.count("<tr>") == 16
    assert "<tr><td>New York</td><td>1000</td><td>0</td></tr>" in body
    assert "<tr><td>West Virginia</td><td>1148</td><td>12</td></tr>" in body
    assert "| South Carolina | 1111 | 9 |" in md


def test_contents_and_index_are_not_tables(tmp_path: Path) -> None:
    """A table of contents (dot leaders, page numbers down the right) and a two-column
    index line up like tables: 11 spurious ones came of them."""
    toc = text_at(72, 720, "Contents", 16, "F2")
    for k in range(12):
        y = 690 - k * 14
        toc += text_at(72, y, f"{k + 1}  {' '.join(WORDS[k : k + 3]).title()}", 10)
        toc += text_at(300, y, " ." * 40, 10) + text_at(520, y, str(3 + k * 4), 10)
    index = text_at(72, 720, "Index", 16, "F2")
    for k in range(20):
        y = 690 - k * 12
        index += text_at(72, y, f"{WORDS[k]}, {k + 2}, {k * 3 + 10}", 9)
        index += text_at(320, y, f"{WORDS[-k - 1]} {WORDS[k]}, {k * 5 + 40}", 9)
    pdf = write_pdf(tmp_path / "toc.pdf", [toc, index])
    md, items = parse(pdf, tmp_path)
    assert not any(i["type"] == "table" for i in items), md
    assert "Contents" in md and "Index" in md


def test_a_turned_margin_stamp_is_not_text(tmp_path: Path) -> None:
    """arXiv's identifier runs up the left margin, turned a quarter: it became 22
    one-letter headings."""
    stamp = "BT /F1 20 Tf 0 1 -1 0 40 200 Tm (arXiv:2101.00001v1 [cs.CL] 1 Jan 2021) Tj ET\n"
    content = stamp + text_at(72, 720, "A Paper Title", 16, "F2") + prose_lines(72, 690, 8)
    pdf = write_pdf(tmp_path / "stamp.pdf", [content])
    md, items = parse(pdf, tmp_path)
    assert "arXiv" not in md
    assert [i["text"] for i in items if i.get("text_level")] == ["A Paper Title"]


def test_headings_against_the_document_body_size(tmp_path: Path) -> None:
    """Body size judged per page: on a page of 8 pt references, 10 pt lines were
    headings.  Judged over the document, they are text; headings in small caps,
    capitals or numbered and set apart at body size are found."""
    page1 = text_at(72, 720, "1. INTRODUCTION", 10) + prose_lines(72, 700, 20)
    page1 += text_at(72, 440, "2.1. Related work", 10) + prose_lines(72, 420, 10)
    page2 = prose_lines(72, 720, 3)
    y = 670.0
    for k in range(30):
        page2 += text_at(72, y, f"[{k + 1}] A. Author, B. Author, Journal {k} (2001) {k * 7}", 8)
        y -= 9.5
    pdf = write_pdf(tmp_path / "refs.pdf", [page1, page2])
    _md, items = parse(pdf, tmp_path)
    headings = [i["text"] for i in items if i.get("text_level")]
    assert headings == ["1. INTRODUCTION", "2.1. Related work"]
