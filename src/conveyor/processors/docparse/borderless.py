"""Tables without vertical rules: columns found by the white space they leave.

Financial statements, and the booktabs tables of most papers, draw no
vertical rules (often no rules at all), so :mod:`tables` finds no grid.
Their columns still show: down a run of consecutive rows, some stretches of
the page are never inked.  Word gaps inside a paragraph do not line up from
one line to the next, so a paragraph of three lines or more leaves no such
stretch; a table does.  Two text columns do too, which is why cells must be
short; a column of list markers does not count, nor does code set in a
fixed-pitch font and lined up with spaces.
"""

from __future__ import annotations

import itertools
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from conveyor.processors.docparse.layout import BRACKETED_LABEL, Char, is_cjk, join_words

MIN_ROWS = 3
MIN_GAP_EM = 1.0  # a column gap is at least this wide (word spaces are ~0.3 em)
ROW_GAP_LINES = 1.3  # rows further apart than this many line heights end a table
MAX_MEDIAN_CELL = 25  # characters: longer is running text in columns
MAX_CELL = 80
MIN_FULL_ROWS = 0.75  # share of rows with at least two filled cells
MAX_MISSES = 4  # rows added without making a table before the run is given up
MONO_SHARE = 0.8  # of a run's characters in a fixed-pitch font: code, not a table
LIST_MARKER = re.compile(
    # bullets (Word's second level is a plain "o", Wingdings' sit in the private use
    # area), numbers, letters and Roman numerals with their dot or bracket
    r"^(?:[•·▪◦‣∙*\-–—o➢►✓✔\uf000-\uf0ff]|\(?\d{1,3}[.)]|\(?[a-zA-Z][.)]|[ivxIVX]+[.)])$"
)


# a table of contents' dot leaders; an index entry's page list ("fit, 97, 104-106")
DOT_LEADER = re.compile(r"(?:\.\s?){4,}|…{2,}|(?:·\s?){3,}")
PAGE = r"(?:\d{1,4}|[ivxlc]{1,6})(?:[–-]\d{1,4})?"
# (an entry has a word: "$106,000" is a figure with a thousands separator)
INDEX_ENTRY = re.compile(rf"^(?=[^,]*[^\W\d_])\S.*?,\s*{PAGE}(?:,\s*{PAGE})*,?$")


def _contents_or_index(cells: Sequence[Sequence[str]]) -> bool:
    """A table of contents (dot leaders to a page number, or a last column of page
    numbers that only go up) or an index (entries ending in page numbers) lines up like
    a table; it is not one."""
    rows = [row for row in cells if any(row)]
    # dot leaders lead to one page number; a statistical table's lead to its figures
    if len(rows[0]) <= 3 and sum(
        1 for row in rows if any(DOT_LEADER.search(c) for c in row)
    ) >= 0.3 * len(rows):
        return True
    filled = [c for row in rows for c in row if c]
    if sum(1 for c in filled if INDEX_ENTRY.match(c)) >= 0.5 * len(filled):
        return True
    last = [row[-1] for row in rows if row[-1]]
    if len(last) >= 4 and all(c.isdigit() and len(c) <= 4 for c in last):
        pages = [int(c) for c in last]
        text = [c for row in rows for c in row[:-1] if c]
        if (
            pages == sorted(pages)
            and len(set(pages)) > 1
            and text
            and sum(1 for c in text if sum(ch.isalpha() for ch in c) > len(c) / 2)
            >= 0.8 * len(text)
        ):
            return True
    return False


def _definition_lines(cells: Sequence[Sequence[str]]) -> bool:
    """Texinfo's definition lines (``@deftypefn``, its ``x`` lines stacked under it):
    the entity at the left, its category in brackets at the right margin, one a row.
    They line up like two columns and are headers of what follows, not a table: every
    filled cell of the last column is such a label."""
    rows = [row for row in cells if any(row)]
    last = [row[-1] for row in rows if row[-1]]
    return (
        len(rows[0]) == 2
        and len(last) >= 0.8 * len(rows)
        and all(BRACKETED_LABEL.match(c) for c in last)
    )


@dataclass
class InkWord:
    """Characters set close together on one row (OCR's words are :class:`ocr.Word`)."""

    text: str
    x0: float
    y0: float
    x1: float
    y1: float
    chars: list[Char]


@dataclass
class Row:
    words: list[InkWord]

    @property
    def y0(self) -> float:
        return min(w.y0 for w in self.words)

    @property
    def y1(self) -> float:
        return max(w.y1 for w in self.words)

    @property
    def height(self) -> float:
        return self.y1 - self.y0


@dataclass
class BorderlessTable:
    bbox: tuple[float, float, float, float]
    cells: list[list[str]]  # rows of cells, left to right
    chars: list[Char]  # every character the table took


def _spaced(chars: Sequence[Char]) -> set[int]:
    """The characters followed by a space in the text layer (PDFium's own word breaks)."""
    out: set[int] = set()
    last: Char | None = None
    for ch in chars:
        if ch.text.isspace():
            if last is not None:
                out.add(id(last))
        elif ch.x1 > ch.x0:
            last = ch
    return out


def _rows(chars: Sequence[Char]) -> list[Row]:
    """Characters into rows (a shared band across the page) of words (split at spaces)."""
    spaced = _spaced(chars)
    inked = sorted(
        (c for c in chars if c.x1 > c.x0 and not c.text.isspace()),
        key=lambda c: ((c.y0 + c.y1) / 2, c.x0),
    )
    bands: list[list[Char]] = []
    top = bottom = 0.0  # of the last band
    for ch in inked:
        mid = (ch.y0 + ch.y1) / 2
        slack = 0.25 * max(ch.size, 1.0)  # a comma's ink hangs below the digits'
        if bands and top - slack <= mid <= bottom + slack:
            bands[-1].append(ch)
            top, bottom = min(top, ch.y0), max(bottom, ch.y1)
            continue
        bands.append([ch])
        top, bottom = ch.y0, ch.y1
    rows = []
    for band in bands:
        band.sort(key=lambda c: c.x0)
        words: list[InkWord] = []
        for ch in band:
            size = max(ch.size, 1.0)
            # a word goes on up to a space in the text layer, or a gap a space wide
            # (Times' space is only 0.25 em)
            if (
                words
                and id(words[-1].chars[-1]) not in spaced
                and ch.x0 - words[-1].x1 <= 0.15 * size
            ):
                w = words[-1]
                w.text += ch.text
                w.x1, w.y0, w.y1 = max(w.x1, ch.x1), min(w.y0, ch.y0), max(w.y1, ch.y1)
                w.chars.append(ch)
            else:
                words.append(InkWord(ch.text, ch.x0, ch.y0, ch.x1, ch.y1, [ch]))
        rows.append(Row(words))
    return rows


Span = tuple[float, float]


def _merge(merged: list[Span], row: Row, min_gap: float) -> list[Span]:
    """The inked stretches of the rows so far plus ``row``; closer than ``min_gap``
    they count as one, so only column gaps stay between them."""
    spans = sorted([*merged, *((w.x0, w.x1) for w in row.words)])
    out: list[Span] = [spans[0]]
    for x0, x1 in spans[1:]:
        last = out[-1]
        if x0 - last[1] < min_gap:
            out[-1] = (last[0], max(last[1], x1))
        else:
            out.append((x0, x1))
    return out


def _gaps(merged: Sequence[Span]) -> list[Span]:
    return [(a[1], b[0]) for a, b in itertools.pairwise(merged)]


def _cells(row: Row, gaps: Sequence[tuple[float, float]]) -> list[str]:
    cells = [""] * (len(gaps) + 1)
    for w in row.words:
        col = sum(1 for g in gaps if w.x0 >= g[1])
        cells[col] = join_words(cells[col], w.text)
    return cells


def _table(rows: Sequence[Row], gaps: Sequence[Span]) -> BorderlessTable | None:
    if len(rows) < MIN_ROWS or not gaps:
        return None
    cells = [_cells(r, gaps) for r in rows]
    if sum(1 for row in cells if sum(1 for c in row if c) >= 2) < MIN_FULL_ROWS * len(rows):
        return None
    filled = [c for row in cells for c in row if c]
    if max(len(c) for c in filled) > MAX_CELL or statistics.median(map(len, filled)) > (
        MAX_MEDIAN_CELL
    ):
        return None
    for col in range(len(gaps) + 1):
        column = [row[col] for row in cells if row[col]]
        if not column or all(LIST_MARKER.match(c) for c in column):
            return None  # an empty column, or a list's markers
        if len(column) >= 2 and len(set(column)) == 1 and len(column[0]) == 1:
            return None  # one glyph down a column: a symbol font's bullet ('!' in DMCA's)
    if _contents_or_index(cells) or _definition_lines(cells):
        return None
    words = [w for r in rows for w in r.words]
    chars = [c for w in words for c in w.chars]
    if sum(c.mono for c in chars) >= MONO_SHARE * len(chars) or _fixed_pitch(chars):
        return None  # a code listing or a dump lined up with spaces
    bbox = (
        min(w.x0 for w in words),
        min(w.y0 for w in words),
        max(w.x1 for w in words),
        max(w.y1 for w in words),
    )
    return BorderlessTable(bbox, cells, chars)


def _fixed_pitch(chars: Sequence[Char]) -> bool:
    """Every letter as wide as the next: a fixed-pitch font the PDF does not name.
    (Digits are left out: most fonts set them all one width, for tables.)"""
    widths = [
        (c.x1 - c.x0) / c.size
        for c in chars
        if c.text.isalpha() and not is_cjk(c.text) and c.size > 0 and c.x1 > c.x0
    ]
    if len(widths) < 12:
        return False
    mid = statistics.median(widths)
    near = sum(1 for w in widths if abs(w - mid) <= 0.04 * mid)
    return near >= 0.95 * len(widths)


def find_borderless(chars: Sequence[Char]) -> list[BorderlessTable]:
    """The longest run of rows that splits into aligned columns, again and again."""
    rows = _rows(chars)
    sizes = [c.size for c in chars if c.size > 0]
    em = statistics.median(sizes) if sizes else 10.0
    min_gap = MIN_GAP_EM * em
    found: list[BorderlessTable] = []
    split = [len(_merge([], r, min_gap)) >= 2 for r in rows]
    if sum(split) < 2:
        return found  # prose: hardly a row has a column gap, so no run can be a table
    i = 0
    while i < len(rows):
        if not split[i]:  # a table's first row fills two cells (else it is trimmed)
            i += 1
            continue
        best: tuple[int, BorderlessTable, list[Span]] | None = None
        merged = _merge([], rows[i], min_gap)
        misses = 0
        for j in range(i + 1, len(rows)):
            prev, nxt = rows[j - 1], rows[j]
            if nxt.y0 - prev.y1 > ROW_GAP_LINES * max(prev.height, nxt.height, em):
                break
            merged = _merge(merged, nxt, min_gap)
            gaps = _gaps(merged)
            if not gaps:
                break
            table = _table(rows[i : j + 1], gaps)
            if table is not None:
                best, misses = (j, table, gaps), 0
                continue
            # Gaps only close as rows are added, so cells only grow: a run that has
            # not made a table for a few rows (two columns of prose) is given up,
            # which keeps the search linear in the page's rows.
            misses += 1
            if misses > MAX_MISSES:
                break
        if best is None:
            i += 1
            continue
        end, table, gaps = best
        start = i
        # a paragraph's short last line just above (or a lone line below) is not a row
        while start < end and sum(1 for c in table.cells[start - i] if c) < 2:
            start += 1
        while end > start and sum(1 for c in table.cells[end - i] if c) < 2:
            end -= 1
        run = list(rows[start : end + 1])
        trimmed = _table(run, gaps)
        if trimmed is not None:
            run, gaps, trimmed = _shed_prose(run, gaps, trimmed)
        if trimmed is not None:
            finer = _finer_gaps(run, gaps, em)
            if finer != list(gaps):
                trimmed = _table(run, finer) or trimmed
                gaps = finer if len(trimmed.cells[0]) == len(finer) + 1 else gaps
            found.extend(_side_by_side(run, gaps, trimmed))
        i = max(end, i) + 1
    return found


PROSE_CELL = 30  # characters: a cell this long, with spaces, is a line of running text
PROSE_SHARE = 0.6  # of a column's cells


def _prose(column: Sequence[str]) -> bool:
    """Most cells lines of running text: long, five words or more, mostly letters (not
    code, formulas or figures)."""
    filled = [c for c in column if c]
    long = [c for c in filled if len(c) >= PROSE_CELL and _wordy(c)]
    return bool(filled) and len(long) >= PROSE_SHARE * len(filled)


def _wordy(text: str) -> bool:
    ink = [c for c in text if not c.isspace()]
    return len(text.split()) >= 5 and sum(c.isalpha() for c in ink) >= 0.75 * len(ink)


def _shed_prose(
    rows: list[Row], gaps: Sequence[Span], table: BorderlessTable
) -> tuple[list[Row], list[Span], BorderlessTable | None]:
    """A table in one column of a page lines up with the lines of the column beside
    it, which become its first or last column ('tracted as a table by our system.
    The columns of the | headed | was-hit'): an edge column of running text lines is
    the page's text, not the table's, and the table is judged again without it."""
    gaps = list(gaps)
    current: BorderlessTable | None = table
    while current is not None and gaps:
        cells = current.cells
        if _prose([row[0] for row in cells]):
            lo, hi = gaps[0][1], 1e9
            gaps = gaps[1:]
        elif _prose([row[-1] for row in cells]):
            lo, hi = -1e9, gaps[-1][0]
            gaps = gaps[:-1]
        else:
            break
        kept = [Row([w for w in r.words if lo <= w.x0 and w.x1 <= hi]) for r in rows]
        rows = [r for r in kept if r.words]
        current = _table(rows, gaps) if gaps else None
    return rows, gaps, current


FINE_GAP_EM = 0.45  # inside a table, columns of figures may stand this close
FINE_INKED = 0.15  # of the rows may cross a fine gap (a header spanning the columns)


def _finer_gaps(rows: Sequence[Row], gaps: Sequence[Span], em: float) -> list[Span]:
    """Columns of a table found with 1 em gaps that are several columns: inside each,
    a stretch at least ``FINE_GAP_EM`` wide that (almost) no row inks, with ink on both
    sides in most rows, is a column gap too (a deluxetable's close columns of figures,
    a tax table's 'At least | But less than').  A spanning header may cross it."""
    if not rows:
        return list(gaps)
    lo = min(w.x0 for r in rows for w in r.words)
    hi = max(w.x1 for r in rows for w in r.words)
    bounds = [lo, *(g for gap in gaps for g in gap), hi]
    out: list[Span] = []
    for k in range(len(gaps) + 1):
        c0, c1 = bounds[2 * k], bounds[2 * k + 1]
        width = int(c1 - c0) + 1
        if width < 3 * FINE_GAP_EM * em:
            if k < len(gaps):
                out.append(gaps[k])
            continue
        cover = [0] * width
        for r in rows:
            seen = [False] * width
            for w in r.words:
                if w.x1 <= c0 or w.x0 >= c1:
                    continue
                for x in range(max(0, int(w.x0 - c0)), min(width, int(w.x1 - c0) + 1)):
                    seen[x] = True
            for x in range(width):
                cover[x] += seen[x]
        limit = FINE_INKED * len(rows)
        x = 0
        while x < width:
            if cover[x] > limit:
                x += 1
                continue
            start = x
            while x < width and cover[x] <= limit:
                x += 1
            left, right = cover[:start], cover[x:]
            if (
                x - start >= FINE_GAP_EM * em
                and left
                and right
                and max(left) >= 0.5 * len(rows)
                and max(right) >= 0.5 * len(rows)
            ):
                out.append((c0 + start, c0 + x))
        if k < len(gaps):
            out.append(gaps[k])
    return sorted(out)


def _side_by_side(
    rows: Sequence[Row], gaps: Sequence[Span], table: BorderlessTable
) -> list[BorderlessTable]:
    """Tables set side by side (a tax table's three panels) line up as one; their header
    repeats across it.  Split where the first filled row's cells repeat with a period."""
    n = len(gaps) + 1
    header = next((row for row in table.cells if sum(1 for c in row if c) >= 2), None)
    if header is None:
        return [table]
    for period in range(1, n // 2 + 1):
        if n % period or not any(header[:period]):
            continue
        if all(header[j] == header[j + period] for j in range(n - period)):
            break
    else:
        return [table]
    out: list[BorderlessTable] = []
    for k in range(n // period):
        lo = gaps[k * period - 1][1] if k else -1e9
        hi = gaps[(k + 1) * period - 1][0] if (k + 1) * period - 1 < len(gaps) else 1e9
        panel = [Row([w for w in r.words if lo <= w.x0 and w.x1 <= hi]) for r in rows]
        panel = [r for r in panel if r.words]
        words = [w for r in panel for w in r.words]
        if not words:
            continue
        cells = [row[k * period : (k + 1) * period] for row in table.cells]
        cells = [row for row in cells if any(row)]
        bbox = (
            min(w.x0 for w in words),
            min(w.y0 for w in words),
            max(w.x1 for w in words),
            max(w.y1 for w in words),
        )
        out.append(BorderlessTable(bbox, cells, [c for w in words for c in w.chars]))
    return out or [table]
