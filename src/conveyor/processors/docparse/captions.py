"""Captions: the "Table 1:" or "图 2" line beside a table or figure belongs to it.

MinerU's content list carries captions inside the table or image item
(``table_caption``, ``image_caption``) and its Markdown writes them next to
it.  Left as body text, a caption would sit between paragraphs, lose its
link to the figure, and a bold one would even become a heading.
"""

from __future__ import annotations

import re

from conveyor.processors.docparse.model import Block

# a label, then a number (Arabic, Roman or Chinese): "Figure 3", "Tab. IV", "表 1", "图1-2"
CAPTION_START = re.compile(
    r"^\s*(?:fig(?:ure)?s?\.?|tab(?:le)?s?\.?|chart|exhibit|plate|图|表|圖)\s*"
    r"(?:\d|[ivx]+\b|[一二三四五六七八九十])",
    re.IGNORECASE,
)
MAX_CAPTION_CHARS = 400
MIN_GAP_PT = 18.0  # a caption sits this close, or two of its lines, whichever is more


def attach_captions(blocks: list[Block]) -> list[Block]:
    """Move each caption into the table or figure it labels; order is kept otherwise.

    ``blocks`` are in reading order, so a caption is the neighbour of what it
    labels: a table's is looked for above it first, a figure's below first.
    """
    taken: set[int] = set()
    for i, block in enumerate(blocks):
        if block.type not in ("table", "image"):
            continue
        nearest = (i - 1, i + 1) if block.type == "table" else (i + 1, i - 1)
        for j in nearest:
            if 0 <= j < len(blocks) and j not in taken and is_caption_of(blocks[j], block):
                block.caption = blocks[j].text
                taken.add(j)
                break
    return [b for k, b in enumerate(blocks) if k not in taken]


def is_caption_of(text: Block, target: Block) -> bool:
    if text.type not in ("text", "title") or len(text.text) > MAX_CAPTION_CHARS:
        return False
    label = CAPTION_START.match(text.text)
    if not label:
        return False
    rest = text.text[label.end() :].lstrip("0123456789.-–ivxIVX一二三四五六七八九十 ")
    if rest[:1].islower():  # "Figure 1 shows that...": a sentence about it, not its label
        return False
    tx0, ty0, tx1, ty1 = text.bbox
    x0, y0, x1, y1 = target.bbox
    if not (tx0 < x1 and x0 < tx1):  # not beside it: in another column
        return False
    gap = ty0 - y1 if ty0 >= (y0 + y1) / 2 else y0 - ty1  # below it, or above it
    return -2.0 <= gap <= max(MIN_GAP_PT, 2.0 * (text.size or 10.0))
