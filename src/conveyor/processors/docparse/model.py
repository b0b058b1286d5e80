"""Blocks, the unit every engine produces, and the two renderings of them.

A page's blocks are plain dicts on the wire (they cross a process boundary
and sit in an on-disk spool), so these helpers read and write dicts.  Page
coordinates are PDF points with the origin at the top-left; the content
list scales them to 0-1000 as MinerU does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

# heading keys are (font size rounded to half a point, bold); bigger first
HeadingKey = tuple[float, bool]
MAX_LEVEL = 6


@dataclass
class Block:
    type: str  # text | title | table | image | equation
    bbox: tuple[float, float, float, float]
    text: str = ""
    size: float = 0.0
    bold: bool = False
    img_path: str = ""
    table_html: str = ""
    table_md: str = ""
    caption: str = ""  # of a table or image
    lines: int = 1  # text lines joined into it
    # a heading only for its size against the page's body text: the document's body
    # size decides in the end (assemble.reclassify)
    by_size: bool = False
    contents: bool = False  # a contents entry (its page number set apart): never a heading

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.type, "bbox": [round(v, 2) for v in self.bbox]}
        for name in ("text", "img_path", "table_html", "table_md", "caption"):
            value = getattr(self, name)
            if value:
                d[name] = value
        if self.type in ("title", "text"):
            d["size"] = round(self.size * 2) / 2
            d["bold"] = self.bold
            if self.lines > 1:
                d["lines"] = self.lines
            if self.by_size:
                d["by_size"] = True
            if self.contents:
                d["contents"] = True
        return d


@dataclass
class PageResult:
    page_idx: int
    width: float
    height: float
    kind: str  # text | scanned
    method: str  # how it was read: text | ocr | none
    blocks: list[dict[str, Any]] = field(default_factory=list)
    chars: int = 0
    ocr_words: int = 0
    sizes: dict[float, int] = field(default_factory=dict)  # characters per text size

    def to_dict(self) -> dict[str, Any]:
        return {
            "page_idx": self.page_idx,
            "width": self.width,
            "height": self.height,
            "kind": self.kind,
            "method": self.method,
            "blocks": self.blocks,
            "chars": self.chars,
            "ocr_words": self.ocr_words,
            "sizes": {str(k): v for k, v in self.sizes.items()},
        }


# heading sizes this close (relative) are one level: OCR size estimates wobble
SAME_LEVEL = 0.06


def heading_levels(keys: Iterable[HeadingKey]) -> dict[HeadingKey, int]:
    """Biggest heading size is level 1; bold at the same size ranks below plain big text."""
    ordered = sorted(set(keys), key=lambda k: (-k[0], not k[1]))
    levels: dict[HeadingKey, int] = {}
    level, lead = 0, None
    for key in ordered:
        if lead is None or key[1] != lead[1] or key[0] < lead[0] * (1 - SAME_LEVEL):
            level, lead = level + 1, key
        levels[key] = min(level, MAX_LEVEL)
    return levels


def heading_key(block: dict[str, Any]) -> HeadingKey:
    return (float(block.get("size", 0.0)), bool(block.get("bold", False)))


def scale_bbox(bbox: list[float], width: float, height: float) -> list[int]:
    """Page points -> MinerU's 0-1000 integer box, clamped to the page."""
    x0, y0, x1, y1 = bbox
    sx, sy = 1000.0 / width if width else 0.0, 1000.0 / height if height else 0.0

    def clamp(v: float) -> int:
        return max(0, min(1000, round(v)))

    return [clamp(x0 * sx), clamp(y0 * sy), clamp(x1 * sx), clamp(y1 * sy)]


def content_item(
    block: dict[str, Any], page: dict[str, Any], levels: dict[HeadingKey, int]
) -> dict[str, Any]:
    """One entry of ``<name>_content_list.json`` in MinerU's shape."""
    bbox = scale_bbox(block["bbox"], page["width"], page["height"])
    kind = block["type"]
    if kind == "image":
        return {
            "type": "image",
            "img_path": block.get("img_path", ""),
            "image_caption": _captions(block),
            "image_footnote": [],
            "page_idx": page["page_idx"],
            "bbox": bbox,
        }
    if kind == "table":
        return {
            "type": "table",
            "img_path": block.get("img_path", ""),
            "table_caption": _captions(block),
            "table_footnote": [],
            "table_body": block.get("table_html", ""),
            "page_idx": page["page_idx"],
            "bbox": bbox,
        }
    if kind == "equation":
        # MinerU writes LaTeX from a formula model; the text layer gives the formula's
        # characters in reading order, so the format says so, and the picture is kept
        return {
            "type": "equation",
            "img_path": block.get("img_path", ""),
            "text": f"$$\n{block.get('text', '')}\n$$",
            "text_format": "unicode",
            "page_idx": page["page_idx"],
            "bbox": bbox,
        }
    item: dict[str, Any] = {"type": "text", "text": block.get("text", "")}
    if kind == "title":
        # MinerU writes a heading as a text item with its level
        item["text_level"] = levels.get(heading_key(block), 1)
    item["page_idx"] = page["page_idx"]
    item["bbox"] = bbox
    return item


def _captions(block: dict[str, Any]) -> list[str]:
    caption = str(block.get("caption", ""))
    return [caption] if caption else []


def markdown_piece(block: dict[str, Any], levels: dict[HeadingKey, int]) -> str:
    """As MinerU writes them: a figure's caption below it, a table's above it."""
    kind = block["type"]
    caption = str(block.get("caption", ""))
    if kind == "title":
        return "#" * levels.get(heading_key(block), 1) + " " + str(block.get("text", ""))
    if kind == "image":
        image = f"![]({block.get('img_path', '')})"
        return f"{image}\n\n{caption}" if caption else image
    if kind == "table":
        table = str(block.get("table_md") or block.get("table_html", ""))
        return f"{caption}\n\n{table}" if caption else table
    if kind == "equation":
        return f"$$\n{block.get('text', '')}\n$$"
    text = str(block.get("text", ""))
    # a paragraph that starts like Markdown's own marks (a shell or gnuplot comment's
    # "#", a quote's ">") is text, not a heading or a quote
    return "\\" + text if text[:1] in ("#", ">") else text
