"""Figures drawn with vector paths: a plot, a TikZ graph, a diagram.

A raster figure is an image object; a vector figure is hundreds of path
objects with a few words among them (axis ticks, node labels, a legend).
Read as text, each label became a paragraph of one letter or number, and a
graph's nodes lined up like a table.  Here the page's path objects are laid
on a coarse grid; a connected region of drawing at least ``MIN_SIDE_PT`` a
side, made of ``MIN_PATHS`` paths or more, whose text is sparse (short lines
only, not lined up as a table's) is a figure: it is rendered as a picture,
and the words inside it are not the page's text.  A region covering most of the page (a slide's
background, a page frame), a ruled table, or one whose text reads like prose
(a boxed note) is not a figure.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from conveyor.processors.docparse.borderless import find_borderless
from conveyor.processors.docparse.layout import Char, chars_to_lines

Box = tuple[float, float, float, float]

CELL_PT = 4.0
MIN_SIDE_PT = 48.0
MIN_PATHS = 8
MAX_PAGE_SHARE = 0.6  # of the page's area: bigger is a background or a frame
MAX_LABEL_CHARS = 24  # a figure's lines of text are labels, not sentences
MAX_LONG_LINES = 0.1  # of its lines may be longer (a legend's entry)
MAX_TEXT_SHARE = 0.35  # of its area under characters: a boxed text, not a figure
ALIGNED_TEXT_CHARS = 10  # lines sharing a left edge this long (median) are text


def _cells(box: Box, cols: int, rows: int) -> tuple[int, int, int, int]:
    c0 = max(0, int(box[0] // CELL_PT))
    r0 = max(0, int(box[1] // CELL_PT))
    c1 = min(cols - 1, int(box[2] // CELL_PT))
    r1 = min(rows - 1, int(box[3] // CELL_PT))
    return c0, r0, c1, r1


def vector_figures(
    drawings: Sequence[Box],
    chars: Sequence[Char],
    width: float,
    height: float,
    exclude: Sequence[Box] = (),
) -> list[Box]:
    """Boxes of the vector figures on a page (its frame's points)."""
    if len(drawings) < MIN_PATHS or width <= 0 or height <= 0:
        return []
    page_area = width * height
    cols, rows = int(width // CELL_PT) + 1, int(height // CELL_PT) + 1
    grid = [[-1] * cols for _ in range(rows)]
    kept: list[Box] = []
    for box in drawings:
        w, h = box[2] - box[0], box[3] - box[1]
        if w * h >= MAX_PAGE_SHARE * page_area or (w < 0.1 and h < 0.1):
            continue
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        if any(e[0] <= cx <= e[2] and e[1] <= cy <= e[3] for e in exclude):
            continue
        kept.append(box)
        c0, r0, c1, r1 = _cells(box, cols, rows)
        # a big path's box is filled only along its edges: an axis frame marks its
        # outline, a long diagonal its ends, so text beside it does not join
        if (c1 - c0) * (r1 - r0) > 400:
            for c in range(c0, c1 + 1):
                grid[r0][c] = grid[r1][c] = 0
            for r in range(r0, r1 + 1):
                grid[r][c0] = grid[r][c1] = 0
        else:
            for r in range(r0, r1 + 1):
                row = grid[r]
                for c in range(c0, c1 + 1):
                    row[c] = 0
    if len(kept) < MIN_PATHS:
        return []
    regions: list[Box] = []
    label = 0
    for r in range(rows):
        for c in range(cols):
            if grid[r][c] != 0:
                continue
            label += 1
            grid[r][c] = label
            top, left, bottom, right = r, c, r, c
            queue = deque([(r, c)])
            while queue:
                y, x = queue.popleft()
                top, bottom, left, right = min(top, y), max(bottom, y), min(left, x), max(right, x)
                for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                    if 0 <= ny < rows and 0 <= nx < cols and grid[ny][nx] == 0:
                        grid[ny][nx] = label
                        queue.append((ny, nx))
            box = (left * CELL_PT, top * CELL_PT, (right + 1) * CELL_PT, (bottom + 1) * CELL_PT)
            if min(box[2] - box[0], box[3] - box[1]) >= MIN_SIDE_PT:
                regions.append(box)
    figures = []
    for box in regions:
        if (box[2] - box[0]) * (box[3] - box[1]) >= MAX_PAGE_SHARE * page_area:
            continue
        paths = sum(
            1
            for d in kept
            if box[0] <= (d[0] + d[2]) / 2 <= box[2] and box[1] <= (d[1] + d[3]) / 2 <= box[3]
        )
        if paths < MIN_PATHS:
            continue
        if _sparse_text(box, chars):
            figures.append(box)
    return figures


def _sparse_text(box: Box, chars: Sequence[Char]) -> bool:
    inside = [
        c
        for c in chars
        if box[0] <= (c.x0 + c.x1) / 2 <= box[2] and box[1] <= (c.y0 + c.y1) / 2 <= box[3]
    ]
    inked = [c for c in inside if c.x1 > c.x0 and not c.text.isspace()]
    if not inked:
        return True
    area = (box[2] - box[0]) * (box[3] - box[1])
    if sum((c.x1 - c.x0) * (c.y1 - c.y0) for c in inked) > MAX_TEXT_SHARE * area:
        return False
    lines = chars_to_lines(inside)
    long = sum(1 for ln in lines if len(ln.text) > MAX_LABEL_CHARS)
    if long > MAX_LONG_LINES * len(lines):
        return False
    # a boxed code listing: lines that start at one left edge and say something
    starts: dict[int, list[int]] = {}
    for ln in lines:
        starts.setdefault(round(ln.x0 / 2), []).append(len(ln.text))
    aligned = max(starts.values(), key=len) if starts else []
    if (
        len(lines) >= 4
        and len(aligned) >= 0.4 * len(lines)
        and sorted(aligned)[len(aligned) // 2] >= ALIGNED_TEXT_CHARS
    ):
        return False
    # a table's cells are short too, but they line up in rows and columns (shaded
    # rows and rules are its paths)
    tabled = sum(len(t.chars) for t in find_borderless(inside))
    return tabled < 0.5 * len(inked)
