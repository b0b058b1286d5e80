"""Ruled tables: from line segments to a grid of cells to HTML and Markdown.

The segments come from the PDF's drawn paths (text pages) or from long dark
runs in the rendered bitmap (scanned pages); either way a table is a set of
horizontal and vertical rules that touch, with at least two of each.
Merged cells are not reconstructed: a cell is the space between adjacent
rules, and a merged cell's text lands in its top-left part.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

Segment = tuple[float, float, float, float]  # x0, y0, x1, y1; points, origin top-left

MIN_RULE = 8.0  # shorter strokes are glyph parts or ticks, not rules
TOL = 2.5


@dataclass
class Grid:
    xs: list[float]  # column boundaries, left to right
    ys: list[float]  # row boundaries, top to bottom

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
        return row, col


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

    for i, h in enumerate(hs):
        for j, v in enumerate(vs):
            if h[0] - TOL <= v[0] <= h[2] + TOL and v[1] - TOL <= h[1] <= v[3] + TOL:
                parent[find(i)] = find(len(hs) + j)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    grids: list[Grid] = []
    for members in groups.values():
        ys = _cluster([hs[i][1] for i in members if i < len(hs)])
        xs = _cluster([vs[i - len(hs)][0] for i in members if i >= len(hs)])
        if len(ys) >= 2 and len(xs) >= 2:
            grids.append(Grid(xs=xs, ys=ys))
    grids.sort(key=lambda g: (g.ys[0], g.xs[0]))
    return grids


def to_html(rows: Sequence[Sequence[str]]) -> str:
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table>{body}</table>"


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
