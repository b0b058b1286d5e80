"""The spool of page results to ``<name>.md`` and ``<name>_content_list.json``.

Two passes over the spool: the first learns the document's heading sizes
(a heading's level depends on every other heading) and its running headers
and footers, the second streams the outputs, so neither the document nor its
outputs are ever held in memory.

Headings found on a page for their size alone are judged again against the
document's body size (the size most of its characters are set in, over
every text page): judged per page, a page of references in 8 pt made its
10 pt lines headings.  A heading that is not bigger than the document's body
text becomes text again (joined with the paragraph it was cut from), and a
short line bigger than it becomes a heading.

Running headers and footers (a page number, a report title repeated at the
top of every page) are left out of both outputs, as MinerU discards them: a
short text block in the top or bottom tenth of a page whose text, digits
aside, recurs there on at least half the pages of a document of three pages
or more, or that is a page number alone, and a short block in that margin on the
same row as one of those.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conveyor.processors.docparse.layout import HEADING_RATIO, SENTENCE_END, join_words
from conveyor.processors.docparse.model import (
    HeadingKey,
    content_item,
    heading_key,
    heading_levels,
    markdown_piece,
)


@dataclass
class Assembled:
    pages: int = 0
    blocks: dict[str, int] = field(default_factory=dict)
    discarded: int = 0  # running headers and footers left out
    images: set[str] = field(default_factory=set)


MARGIN = 0.1  # the top and bottom tenth of a page hold running headers and footers
RUNNING_MAX_CHARS = 120
RunningKey = tuple[str, str]


def running_key(block: dict[str, Any], page: dict[str, Any]) -> RunningKey | None:
    """Where and what a block would be as a running header/footer, or None."""
    height = float(page.get("height") or 0)
    if block["type"] not in ("text", "title") or height <= 0:
        return None
    y0, y1 = float(block["bbox"][1]), float(block["bbox"][3])
    if y1 <= height * MARGIN:
        zone = "top"
    elif y0 >= height * (1 - MARGIN):
        zone = "bottom"
    else:
        return None
    text = " ".join(str(block.get("text", "")).split()).lower()
    if not text or len(text) > RUNNING_MAX_CHARS:
        return None
    return zone, re.sub(r"\d+", "#", text)


# a page number alone in the top or bottom margin ("12", "- 12 -", "xiv", "Page 3") is
# a running header or footer however many pages print theirs elsewhere (Texinfo puts
# it left on even pages, right on odd ones, next to the chapter's title)
FOLIO = re.compile(r"^(?:page\s*)?[-–—]?\s*(?:#|[ivxlc]{1,6})\s*[-–—]?$")


def running_keys(counts: dict[RunningKey, int], pages: int) -> set[RunningKey]:
    if pages < 3:
        return set()
    return {k for k, n in counts.items() if n >= max(3, (pages + 1) // 2)}


def read_spool(spool: Path) -> Iterator[dict[str, Any]]:
    with spool.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


@dataclass
class DocumentFacts:
    body: float  # the size most characters of its text pages are set in
    pages: int
    running: set[RunningKey]  # running headers and footers

    def is_running(self, block: dict[str, Any], page: dict[str, Any]) -> bool:
        key = running_key(block, page) if self.pages >= 3 else None
        return key is not None and (key in self.running or bool(FOLIO.match(key[1])))

    def running_on(self, blocks: list[dict[str, Any]], page: dict[str, Any]) -> list[bool]:
        """Which of a page's blocks are running headers or footers: those ``is_running``
        says, and a short block in the margin on the same row as one that recurs (Texinfo's
        header "6  gnuplot 5.4  CONTENTS": the part's name recurs only on its own pages,
        the rest of the row on all; left in, it became a heading on every such page).
        A page number alone does not take its row with it: an article's running title
        beside it, on every other page, is not known to be one."""
        flags = [self.is_running(b, page) for b in blocks]
        rows = [
            b["bbox"]
            for b, f in zip(blocks, flags, strict=True)
            if f and running_key(b, page) in self.running
        ]
        if not rows:
            return flags
        for i, b in enumerate(blocks):
            if flags[i] or running_key(b, page) is None:
                continue
            y0, y1 = float(b["bbox"][1]), float(b["bbox"][3])
            mid = (y0 + y1) / 2
            flags[i] = any(float(r[1]) <= mid <= float(r[3]) for r in rows)
        return flags


def document_facts(spool: Path) -> DocumentFacts:
    """What the pages say only together: the body size and the running headers."""
    counts: dict[float, int] = {}
    seen: dict[RunningKey, int] = {}
    pages = 0
    for page in read_spool(spool):
        pages += 1
        if page.get("method") == "text":
            for size, n in (page.get("sizes") or {}).items():
                counts[float(size)] = counts.get(float(size), 0) + int(n)
        for rk in {k for b in page["blocks"] if (k := running_key(b, page)) is not None}:
            seen[rk] = seen.get(rk, 0) + 1
    body = max(counts, key=lambda k: counts[k]) if counts else 0.0
    return DocumentFacts(body, pages, running_keys(seen, pages))


SLIDE_TITLE_MAX_CHARS = 80


def _slide_title(blocks: list[dict[str, Any]], page: dict[str, Any], facts: DocumentFacts) -> None:
    """On a slide (a page wider than tall), the first line under the running header
    bars, short and not a sentence, is the frame's title, whatever its size (beamer
    sets it at the body's size, in colour)."""
    width, height = float(page.get("width") or 0), float(page.get("height") or 0)
    if width <= height or height <= 0:
        return
    for i, b in enumerate(blocks):
        if b["type"] not in ("text", "title") or facts.is_running(b, page):
            continue
        text = str(b.get("text", ""))
        if (
            b["type"] == "text"
            and float(b["bbox"][1]) < 0.3 * height
            and len(text) <= SLIDE_TITLE_MAX_CHARS
            and int(b.get("lines", 1)) <= 2
            and not text.endswith(SENTENCE_END)
            and any(c.isalpha() for c in text)
        ):
            blocks[i] = {**b, "type": "title"}
        return


def _joinable(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """``b`` goes on the paragraph ``a`` (the next block in reading order)."""
    if a["type"] != "text" or b["type"] != "text":
        return False
    sa, sb = float(a.get("size") or 0), float(b.get("size") or 0)
    ax0, _ay0, ax1, ay1 = a["bbox"]
    bx0, by0, bx1, _by1 = b["bbox"]
    size = max(sa, sb, 1.0)
    return (
        abs(sa - sb) < 0.6
        and min(ax1, bx1) - max(ax0, bx0) > 0.5 * min(ax1 - ax0, bx1 - bx0)
        and -0.5 * size <= by0 - ay1 <= 0.9 * size
    )


def reclassify(page: dict[str, Any], facts: DocumentFacts) -> list[dict[str, Any]]:
    """The page's blocks with headings judged against the document's body size."""
    blocks = page["blocks"]
    body = facts.body
    if body <= 0 or page.get("method") != "text":
        return list(blocks)
    out: list[dict[str, Any]] = []
    changed: list[bool] = []
    for block in blocks:
        b, moved = block, False
        size = float(block.get("size") or 0)
        text = str(block.get("text", ""))
        if block["type"] == "title" and block.get("by_size") and size < HEADING_RATIO * body:
            b, moved = {**block, "type": "text"}, True
        elif (
            block["type"] == "text"
            and not block.get("contents")
            and size >= HEADING_RATIO * body
            and len(text) <= 200
            and int(block.get("lines", 1)) <= 3
            and not text.endswith(SENTENCE_END)
            and any(c.isalpha() for c in text)
        ):
            b = {**block, "type": "title", "by_size": True}
        if out and (moved or changed[-1]) and _joinable(out[-1], b):
            prev = out[-1]
            x0, y0, x1, y1 = prev["bbox"]
            out[-1] = {
                **prev,
                "text": join_words(str(prev.get("text", "")), text),
                "bbox": [
                    min(x0, b["bbox"][0]),
                    min(y0, b["bbox"][1]),
                    max(x1, b["bbox"][2]),
                    max(y1, b["bbox"][3]),
                ],
                "lines": int(prev.get("lines", 1)) + int(b.get("lines", 1)),
            }
            changed[-1] = True
            continue
        out.append(b)
        changed.append(moved)
    _slide_title(out, page, facts)
    return out


def assemble(spool: Path, markdown: Path | None, content_list: Path | None) -> Assembled:
    keys: set[HeadingKey] = set()
    facts = document_facts(spool)
    for page in read_spool(spool):
        blocks = reclassify(page, facts)
        keys.update(
            heading_key(b)
            for b, running in zip(blocks, facts.running_on(blocks, page), strict=True)
            if b["type"] == "title" and not running
        )
    levels = heading_levels(keys)
    out = Assembled()
    md = markdown.open("w", encoding="utf-8") if markdown else None
    cl = content_list.open("w", encoding="utf-8") if content_list else None
    try:
        if cl:
            cl.write("[")
        first_md, first_item = True, True
        for page in read_spool(spool):
            out.pages += 1
            blocks = reclassify(page, facts)
            for block, running in zip(blocks, facts.running_on(blocks, page), strict=True):
                if running:
                    out.discarded += 1
                    continue
                out.blocks[block["type"]] = out.blocks.get(block["type"], 0) + 1
                if block.get("img_path"):
                    out.images.add(block["img_path"])
                if md:
                    piece = markdown_piece(block, levels).strip()
                    if piece:
                        md.write(piece if first_md else "\n\n" + piece)
                        first_md = False
                if cl:
                    item = content_item(block, page, levels)
                    cl.write(
                        ("\n  " if first_item else ",\n  ") + json.dumps(item, ensure_ascii=False)
                    )
                    first_item = False
        if md:
            md.write("\n")
        if cl:
            cl.write("\n]\n")
    finally:
        if md:
            md.close()
        if cl:
            cl.close()
    return out
