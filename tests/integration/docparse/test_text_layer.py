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
from tests.integration.docparse.rawpdf import text_at, write_pdf

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
