"""The spool of page results to ``<name>.md`` and ``<name>_content_list.json``.

Two passes over the spool: the first learns the document's heading sizes
(a heading's level depends on every other heading), the second streams the
outputs, so neither the document nor its outputs are ever held in memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    images: set[str] = field(default_factory=set)


def read_spool(spool: Path) -> Iterator[dict[str, Any]]:
    with spool.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def assemble(spool: Path, markdown: Path | None, content_list: Path | None) -> Assembled:
    keys: set[HeadingKey] = set()
    for page in read_spool(spool):
        keys.update(heading_key(b) for b in page["blocks"] if b["type"] == "title")
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
            for block in page["blocks"]:
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
