"""Page ranges as people type them ("1-3,7,10-"), turned into 0-based indices."""

from __future__ import annotations

import re

_PART = re.compile(r"^\s*(\d*)\s*(-?)\s*(\d*)\s*$")


def parse_page_range(spec: str) -> list[tuple[int, int | None]]:
    """Parse into 1-based inclusive spans; an open end is None. Raises ValueError."""
    spans: list[tuple[int, int | None]] = []
    for part in spec.split(","):
        if not part.strip():
            continue
        m = _PART.match(part)
        if not m or (not m.group(1) and not m.group(3)):
            raise ValueError(f"bad page range {part.strip()!r}: use forms like 1-5,8,10-")
        first = int(m.group(1)) if m.group(1) else 1
        if m.group(2):
            last: int | None = int(m.group(3)) if m.group(3) else None
        else:
            last = first
        if first < 1 or (last is not None and last < first):
            raise ValueError(f"bad page range {part.strip()!r}: pages count from 1, low to high")
        spans.append((first, last))
    if not spans:
        raise ValueError("the page range is empty")
    return spans


def select_pages(spec: str | None, page_count: int) -> list[int]:
    """0-based page indices in document order; ValueError if none falls in the document."""
    if spec is None:
        return list(range(page_count))
    chosen: set[int] = set()
    for first, last in parse_page_range(spec):
        end = page_count if last is None else min(last, page_count)
        chosen.update(range(first - 1, end))
    if not chosen:
        raise ValueError(f"page range {spec!r} is outside the document's {page_count} page(s)")
    return sorted(chosen)
