"""Ruled tables: from line segments to a grid of cells to HTML and Markdown.

The segments come from the PDF's drawn paths (text pages) or from long dark
runs in the rendered bitmap (scanned pages); either way a table is a set of
horizontal and vertical rules that touch, with at least two of each.
A cell is the space between adjacent rules; where the rule between two
cells is missing they are one merged cell (rowspan/colspan in the HTML).
"""

from __future__ import annotations

import bisect
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

Segment = tuple[float, float, float, float]  # x0, y0, x1, y1; points, origin top-left

MIN_RULE = 8.0  # shorter strokes are glyph parts or ticks, not rules
TOL = 2.5


@dataclass
class Grid:
    xs: list[float]  # column boundaries, left to right
    ys: list[float]  # row boundaries, top to bottom
    # the rules themselves: where one is missing between two cells, they are one
    hrules: list[Segment] = field(default_factory=list)
    vrules: list[Segment] = field(default_factory=list)
    # (row, k): the vertical grid line k is not a rule in that row, whatever is drawn
    # there (a word runs across it: a spanning header whose rule stops short of it)
    open_v: set[tuple[int, int]] = field(default_factory=set)
    _merges: dict[tuple[int, int], tuple[int, int, int, int]] | None = field(
        default=None, repr=False, compare=False
    )

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        return (self.xs[0], self.ys[0], self.xs[-1], self.ys[-1])

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.ys) - 1, len(self.xs) - 1)

    def cell_of(self, x: float, y: float) -> tuple[int, int] | None:
        if not (self.xs[0] <= x <= self.xs[-1] and self.ys[0] <= y <= self.ys[-1]):
            return None
        col = next((i for i in range(len(self.xs) - 1) if x <= self.xs[i + 1]), None)
        row = next((i for i in range(len(self.ys) - 1) if y <= self.ys[i + 1]), None)
        if col is None or row is None:
            return None
        merge = self.merged().get((row, col))
        return (merge[0], merge[1]) if merge else (row, col)  # a merged cell by its first

    @staticmethod
    def _by_line(
        lines: Sequence[float], rules: Sequence[tuple[float, float, float]]
    ) -> list[list[tuple[float, float]]]:
        """For each grid line, the stretches of rule along it (from (at, start, end))."""
        out: list[list[tuple[float, float]]] = [[] for _ in lines]
        for at, start, end in rules:
            k = bisect.bisect_left(lines, at - 2 * TOL)
            while k < len(lines) and lines[k] <= at + 2 * TOL:
                out[k].append((start - TOL, end + TOL))
                k += 1
        return out

    def merged(self) -> dict[tuple[int, int], tuple[int, int, int, int]]:
        """Merged cells: each cell of a merge -> (row, col, rowspan, colspan) of the merge.

        Two neighbouring cells are one where no rule runs between them at the
        middle of their shared side.  A merge that is not a rectangle is left
        as separate cells.
        """
        if self._merges is None:
            self._merges = self._find_merges()
        return self._merges

    def _find_merges(self) -> dict[tuple[int, int], tuple[int, int, int, int]]:
        rows_n, cols_n = self.shape
        if not self.vrules or not self.hrules:
            return {}  # a grid made without its rules: every cell stands alone
        # the rules indexed by the grid line they lie on: a table drawn cell by
        # cell has thousands of them
        down = self._by_line(self.xs, [(v[0], v[1], v[3]) for v in self.vrules])
        across = self._by_line(self.ys, [(h[1], h[0], h[2]) for h in self.hrules])

        def ruled(stretches: list[tuple[float, float]], at: float) -> bool:
            return any(a <= at <= b for a, b in stretches)

        parent = {(r, c): (r, c) for r in range(rows_n) for c in range(cols_n)}

        def find(cell: tuple[int, int]) -> tuple[int, int]:
            while parent[cell] != cell:
                parent[cell] = parent[parent[cell]]
                cell = parent[cell]
            return cell

        for r in range(rows_n):
            mid_y = (self.ys[r] + self.ys[r + 1]) / 2
            for c in range(cols_n):
                mid_x = (self.xs[c] + self.xs[c + 1]) / 2
                if c + 1 < cols_n and ((r, c + 1) in self.open_v or not ruled(down[c + 1], mid_y)):
                    parent[find((r, c))] = find((r, c + 1))
                if r + 1 < rows_n and not ruled(across[r + 1], mid_x):
                    parent[find((r, c))] = find((r + 1, c))
        groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for cell in parent:
            groups.setdefault(find(cell), []).append(cell)
        out: dict[tuple[int, int], tuple[int, int, int, int]] = {}
        for cells in groups.values():
            if len(cells) < 2:
                continue
            r0, c0 = min(r for r, _ in cells), min(c for _, c in cells)
            r1, c1 = max(r for r, _ in cells), max(c for _, c in cells)
            if (r1 - r0 + 1) * (c1 - c0 + 1) != len(cells):
                continue
            for cell in cells:
                out[cell] = (r0, c0, r1 - r0 + 1, c1 - c0 + 1)
        return out


def _cluster(values: Sequence[float], tol: float = TOL) -> list[float]:
    out: list[list[float]] = []
    for v in sorted(values):
        if out and v - out[-1][-1] <= tol:
            out[-1].append(v)
        else:
            out.append([v])
    return [sum(g) / len(g) for g in out]


def split_rules(segments: Sequence[Segment]) -> tuple[list[Segment], list[Segment]]:
    """Horizontal and vertical rules, normalised so x0<=x1 and y0<=y1."""
    hs: list[Segment] = []
    vs: list[Segment] = []
    for x0, y0, x1, y1 in segments:
        x0, x1 = min(x0, x1), max(x0, x1)
        y0, y1 = min(y0, y1), max(y0, y1)
        if y1 - y0 <= TOL and x1 - x0 >= MIN_RULE:
            y = (y0 + y1) / 2
            hs.append((x0, y, x1, y))
        elif x1 - x0 <= TOL and y1 - y0 >= MIN_RULE:
            x = (x0 + x1) / 2
            vs.append((x, y0, x, y1))
    return hs, vs


def find_tables(segments: Sequence[Segment]) -> list[Grid]:
    """Connected sets of rules with at least two horizontal and two vertical ones."""
    hs, vs = split_rules(segments)
    if len(hs) < 2 or len(vs) < 2:
        return []
    n = len(hs) + len(vs)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    # verticals sorted by x: each horizontal meets only those within its own span
    # (a table exported cell by cell draws thousands of short rules)
    order = sorted(range(len(vs)), key=lambda j: vs[j][0])
    xs_sorted = [vs[j][0] for j in order]
    for i, h in enumerate(hs):
        lo = bisect.bisect_left(xs_sorted, h[0] - TOL)
        hi = bisect.bisect_right(xs_sorted, h[2] + TOL)
        for j in order[lo:hi]:
            v = vs[j]
            if v[1] - TOL <= h[1] <= v[3] + TOL:
                parent[find(i)] = find(len(hs) + j)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    grids: list[Grid] = []
    for members in groups.values():
        ys = _cluster([hs[i][1] for i in members if i < len(hs)])
        xs = _cluster([vs[i - len(hs)][0] for i in members if i >= len(hs)])
        if len(ys) >= 2 and len(xs) >= 2:
            xs = _outer_columns(xs, [hs[i] for i in members if i < len(hs)])
            grids.append(
                Grid(
                    xs=xs,
                    ys=ys,
                    hrules=[hs[i] for i in members if i < len(hs)],
                    vrules=[vs[i - len(hs)] for i in members if i >= len(hs)],
                )
            )
    grids.sort(key=lambda g: (g.ys[0], g.xs[0]))
    return grids


def _outer_columns(xs: list[float], hrules: Sequence[Segment]) -> list[float]:
    """Column edges with the outer columns that have no rule on their far side: where
    the horizontal rules run on past the outermost vertical one (a LaTeX table
    ``{l|r|...|r}``: its row labels left of the first rule, its last column right of
    the last), their common end is the table's edge, so those columns are cells too
    and not text beside the table.  Two rules at least must reach that far."""
    out = list(xs)
    lefts = sorted(h[0] for h in hrules)
    rights = sorted((h[2] for h in hrules), reverse=True)
    if len(hrules) >= 2:
        if lefts[1] < xs[0] - MIN_RULE:
            out.insert(0, lefts[1])
        if rights[1] > xs[-1] + MIN_RULE:
            out.append(rights[1])
    return out


class Boxed(Protocol):
    x0: float
    y0: float
    x1: float
    y1: float


# a row holding text lines that line up across its cells is that many rows, ruled or not
MIN_SPLIT_CELLS = 2
SHORT_LINE = 24  # characters: a row of two wrapped lines splits only if its lines are short


def split_rows(grid: Grid, items: Sequence[Boxed], texts: Sequence[str] | None = None) -> Grid:
    """The grid with a row boundary wherever its text shows one (a table ruled every
    five rows is still five rows to a rule).

    Within a grid row, the text lines are bands of ink across the row; a white
    band between two of them is a row boundary when at least two cells have
    text on both sides of it.  A cell whose text wraps onto a second line
    beside one-line neighbours has text on one side only, so it stays one cell.
    Two-line rows are split only when their lines are short (data, not prose).
    """
    rows_n, cols_n = grid.shape
    by_row: dict[int, list[tuple[float, float, int, int]]] = {}
    for n, it in enumerate(items):
        if it.x1 <= it.x0:
            continue
        cy, cx = (it.y0 + it.y1) / 2, (it.x0 + it.x1) / 2
        if not (grid.xs[0] <= cx <= grid.xs[-1] and grid.ys[0] <= cy <= grid.ys[-1]):
            continue
        r = min(bisect.bisect_left(grid.ys, cy) - 1, rows_n - 1)
        c = min(bisect.bisect_left(grid.xs, cx) - 1, cols_n - 1)
        half = 0.3 * (it.y1 - it.y0)  # the core of the glyph: ascenders and descenders
        by_row.setdefault(max(r, 0), []).append((cy - half, cy + half, max(c, 0), n))
    new_ys: list[float] = []
    for all_items in by_row.values():
        # a glyph much lower than the row's letters (a decimal point, a comma, a
        # rule's dash) sits on the line of the figures it belongs to: it makes no
        # band of its own ('21.0' was a row '21 0' and a row '.')
        heights = sorted(core[1] - core[0] for core in all_items)
        usual = heights[len(heights) // 2]
        row_items = sorted(core for core in all_items if core[1] - core[0] >= 0.5 * usual)
        bands: list[list[tuple[float, float, int, int]]] = []
        bottom = -1e9
        for core in row_items:
            if bands and core[0] <= bottom:
                bands[-1].append(core)
                bottom = max(bottom, core[1])
            else:
                bands.append([core])
                bottom = core[1]
        if len(bands) < 2:
            continue
        cols_in = [{core[2] for core in band} for band in bands]
        if len(bands) == 2 and texts is not None:
            per_cell: dict[tuple[int, int], int] = {}
            for b, band in enumerate(bands):
                for core in band:
                    key = (b, core[2])
                    per_cell[key] = per_cell.get(key, 0) + len(texts[core[3]])
            if max(per_cell.values()) > SHORT_LINE:
                continue
        for k in range(1, len(bands)):
            above = set().union(*cols_in[:k])
            below = set().union(*cols_in[k:])
            if len(above & below) >= MIN_SPLIT_CELLS:
                top_of_next = min(it[0] for it in bands[k])
                bottom_of_prev = max(it[1] for it in bands[k - 1])
                new_ys.append((top_of_next + bottom_of_prev) / 2)
    if not new_ys:
        return grid
    x0, x1 = grid.xs[0], grid.xs[-1]
    return Grid(
        xs=list(grid.xs),
        ys=sorted([*grid.ys, *new_ys]),
        hrules=[*grid.hrules, *((x0, y, x1, y) for y in new_ys)],
        vrules=list(grid.vrules),
    )


Spans = dict[tuple[int, int], tuple[int, int, int, int]]  # as Grid.merged() gives them


def to_html(rows: Sequence[Sequence[str]], spans: Spans | None = None) -> str:
    """HTML as MinerU's ``table_body``: a merged cell once, with rowspan/colspan."""
    spans = spans or {}
    body = []
    for r, row in enumerate(rows):
        cells = []
        for c, text in enumerate(row):
            span = spans.get((r, c))
            if span is not None and (span[0], span[1]) != (r, c):
                continue  # covered by the merge that starts up and to the left
            attrs = ""
            if span is not None and span[2] > 1:
                attrs += f' rowspan="{span[2]}"'
            if span is not None and span[3] > 1:
                attrs += f' colspan="{span[3]}"'
            cells.append(f"<td{attrs}>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table>{''.join(body)}</table>"


def to_markdown(rows: Sequence[Sequence[str]]) -> str:
    """A pipe table; the first row is the header, as it usually is in a ruled table."""
    if not rows:
        return ""

    def cell(c: str) -> str:
        return c.replace("|", "\\|").replace("\n", " ").strip()

    width = max(len(r) for r in rows)
    lines = []
    for i, row in enumerate(rows):
        cells = [cell(c) for c in row] + [""] * (width - len(row))
        lines.append("| " + " | ".join(cells) + " |")
        if i == 0:
            lines.append("|" + "|".join([" --- "] * width) + "|")
    return "\n".join(lines)
