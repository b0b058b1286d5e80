"""Ruled tables on a text page: which ruled regions are tables, and their cells' text.

Rules alone do not make a table.  A beamer theme draws its frame, header and
footer bars as rectangles; a page border, a boxed note and a chart's axes and
grid are rules too.  A ruled region is a table only when the text inside has
a table's structure: at least ``MIN_FILLED_ROWS`` rows with text in two cells
or more, and, on a region covering most of the page, no single cell holding
most of its text (a frame around the page's content).  A region that is not a
table gives its characters back to the page, where they are read as text (or
as a table without rules, if they line up like one).

Inside a table, the text also decides the rows and the spans: lines that line
up across the cells of one ruled row are rows of their own (``split_rows``), and
a word that runs across a column's grid line in a row where no rule is drawn
joins the two cells (a spanning header).  Spaces of the text layer stay in the
cells.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from conveyor.processors.docparse.layout import Char, chars_to_lines, join_words
from conveyor.processors.docparse.tables import Grid, find_tables, split_rows

MIN_FILLED_ROWS = 2
MAX_STRADDLING = 0.1  # of the words: more run across its lines, it is text under a figure
MIN_FILL = 0.2  # of the cells: a chart's grid or a figure's boxes are mostly empty
FRAME_AREA = 0.6  # of the page: a region this big may be the page's frame
FRAME_CELL_SHARE = 0.5  # ...and is, when one cell holds this much of its text


@dataclass
class RuledTable:
    grid: Grid
    cells: dict[tuple[int, int], str]


def _raw_cell(grid: Grid, x: float, y: float) -> tuple[int, int]:
    rows_n, cols_n = grid.shape
    r = min(max(bisect.bisect_left(grid.ys, y) - 1, 0), rows_n - 1)
    c = min(max(bisect.bisect_left(grid.xs, x) - 1, 0), cols_n - 1)
    return r, c


def _open_straddled(grid: Grid, chars: Sequence[Char]) -> tuple[int, int, int]:
    """A word whose letters fall on both sides of a grid line, in a row where no rule
    is drawn at the word's height, opens that line in that row.

    Returns how many words there are, how many straddle a grid line, and how many
    run through a rule that is drawn: text set across a table's lines is not a
    table's (a figure's frame, or a chart's grid, laid over running text)."""
    down: dict[int, list[tuple[float, float, float]]] = {}
    for k, x in enumerate(grid.xs):
        down[k] = [(v[0], v[1], v[3]) for v in grid.vrules if abs(v[0] - x) <= 5.0]
    words = straddling = through = 0
    prev: Char | None = None
    crossed = False
    for ch in chars:
        if ch.text.isspace() or ch.x1 <= ch.x0:
            prev = None
            continue
        if prev is None or ch.x0 - prev.x1 >= 0.3 * max(ch.size, 1.0):
            words += 1
            crossed = False
        elif not crossed:
            ra, ca = _raw_cell(grid, (prev.x0 + prev.x1) / 2, (prev.y0 + prev.y1) / 2)
            rb, cb = _raw_cell(grid, (ch.x0 + ch.x1) / 2, (ch.y0 + ch.y1) / 2)
            if ra == rb and ca != cb:
                crossed = True
                straddling += 1
                mid = (ch.y0 + ch.y1) / 2
                for k in range(min(ca, cb) + 1, max(ca, cb) + 1):
                    if any(y0 - 1 <= mid <= y1 + 1 for _, y0, y1 in down[k]):
                        through += 1
                    else:
                        grid.open_v.add((ra, k))
        prev = ch
    return words, straddling, through


def _is_table(
    grid: Grid,
    cells: dict[tuple[int, int], str],
    counts: dict[tuple[int, int], int],
    page_area: float,
) -> bool:
    filled: dict[int, int] = {}
    for (r, _c), text in cells.items():
        if text.strip():
            filled[r] = filled.get(r, 0) + 1
    if sum(1 for n in filled.values() if n >= 2) < MIN_FILLED_ROWS:
        return False
    rows_n, cols_n = grid.shape
    merged = grid.merged()
    distinct = rows_n * cols_n - sum(1 for k, v in merged.items() if (v[0], v[1]) != k)
    if sum(filled.values()) < MIN_FILL * distinct:
        return False
    x0, y0, x1, y1 = grid.bbox
    total = sum(counts.values())
    big = page_area > 0 and (x1 - x0) * (y1 - y0) >= FRAME_AREA * page_area
    return not (big and total and max(counts.values()) >= FRAME_CELL_SHARE * total)


def ruled_tables(
    chars: Sequence[Char], segments: Sequence[tuple[float, float, float, float]], page_area: float
) -> tuple[list[RuledTable], list[Char]]:
    """The page's ruled tables and the characters left for the rest of the page, in
    their content order."""
    grids = [g for g in find_tables(segments) if g.shape[0] * g.shape[1] >= 2]
    if not grids:
        return [], list(chars)
    owner: list[int] = []  # per character: its grid, or -1
    last = -1
    for ch in chars:
        if ch.x1 > ch.x0 and not ch.text.isspace():
            cx, cy = (ch.x0 + ch.x1) / 2, (ch.y0 + ch.y1) / 2
            last = next(
                (
                    gi
                    for gi, g in enumerate(grids)
                    if g.xs[0] <= cx <= g.xs[-1] and g.ys[0] <= cy <= g.ys[-1]
                ),
                -1,
            )
            owner.append(last)
        else:  # a space or line break goes with the character before it
            owner.append(last)
    # a word with letters inside a region and letters outside it: the region cuts
    # through running text, so it is a figure's or a page's lines, not a table
    cut: set[int] = set()
    prev, prev_owner = None, -1
    for ch, o in zip(chars, owner, strict=True):
        if ch.x1 <= ch.x0 or ch.text.isspace():
            prev = None
            continue
        if prev is not None and o != prev_owner and ch.x0 - prev.x1 < 0.3 * max(ch.size, 1.0):
            cut.update(g for g in (o, prev_owner) if g >= 0)
        prev, prev_owner = ch, o
    tables: list[RuledTable] = []
    taken: set[int] = set()
    for gi, grid in enumerate(grids):
        if gi in cut:
            continue
        mine = [ch for ch, o in zip(chars, owner, strict=True) if o == gi]
        inked = [ch for ch in mine if ch.x1 > ch.x0 and not ch.text.isspace()]
        if not inked:
            continue
        grid = split_rows(grid, inked, [ch.text for ch in inked])
        words, straddling, through = _open_straddled(grid, mine)
        if through >= 2 or straddling > max(2, MAX_STRADDLING * words):
            continue
        per_cell: dict[tuple[int, int], list[Char]] = {}
        counts: dict[tuple[int, int], int] = {}
        cell: tuple[int, int] | None = None
        for ch in mine:
            if ch.x1 > ch.x0 and not ch.text.isspace():
                cell = grid.cell_of((ch.x0 + ch.x1) / 2, (ch.y0 + ch.y1) / 2)
                if cell is not None:
                    counts[cell] = counts.get(cell, 0) + 1
            if cell is not None:
                per_cell.setdefault(cell, []).append(ch)
        cells: dict[tuple[int, int], str] = {}
        for key, cell_chars in per_cell.items():
            text = ""
            for ln in chars_to_lines(cell_chars):
                text = join_words(text, ln.text)
            cells[key] = text
        if _is_table(grid, cells, counts, page_area):
            tables.append(RuledTable(grid, cells))
            taken.add(gi)
    free = [ch for ch, o in zip(chars, owner, strict=True) if o not in taken]
    return tables, free
