"""Line numbers in a page's margin: a column of small increasing integers, not text.

Manuscripts (AAS journals, lineno, ``\\linenumbers``) and numbered code
listings print a number beside every line or every fifth.  Read as text, each
becomes a one-word paragraph, and beside the lines they number they look like
the first column of a two-column table.  They are found here and left out
before anything else reads the page:

- each is a run of digits alone at the edge of its row: the first thing on it
  (or the last, for numbers in the right margin), with a gap of at least
  ``MIN_GAP_EM`` before the row's text, or alone on its row (a blank line,
  a displayed formula);
- they line up: right edges within ``ALIGN_PT`` (left edges in the right margin);
- down the page their values increase, in at least ``MIN_RUN`` of them;
- each step in value is that many lines down the page, each at the pitch of
  a line of text (a table's column of values goes up as its data does), or
  they count up one by one, each at least a line below the one before (a
  display between two numbered lines), set smaller than the text beside them;
- and they are set apart from the text: in the page's margin (outside the
  edge where the page's lines start, or end), or smaller than the text of
  their rows.  A table's first column of row numbers is neither.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from conveyor.processors.docparse.layout import Char

MIN_RUN = 5
ALIGN_PT = 2.0
MIN_GAP_EM = 0.8
MAX_DIGITS = 5
MIN_PITCH_EM, MAX_PITCH_EM = 0.9, 2.5  # a line's pitch, in sizes of its text
SMALLER = 0.85  # numbers this much smaller than the text beside them are apart from it


@dataclass
class _Num:
    value: int
    chars: list[Char]
    x0: float
    x1: float
    y: float
    size: float
    row_size: float  # median size of the rest of its row (0 when alone)


def _rows(chars: Sequence[Char]) -> list[list[Char]]:
    inked = sorted(
        (c for c in chars if c.x1 > c.x0 and not c.text.isspace()),
        key=lambda c: ((c.y0 + c.y1) / 2, c.x0),
    )
    rows: list[list[Char]] = []
    top = bottom = 0.0
    for ch in inked:
        mid = (ch.y0 + ch.y1) / 2
        if rows and top <= mid <= bottom:
            rows[-1].append(ch)
            top, bottom = min(top, ch.y0), max(bottom, ch.y1)
        else:
            rows.append([ch])
            top, bottom = ch.y0, ch.y1
    for row in rows:
        row.sort(key=lambda c: c.x0)
    return rows


def _edge_number(row: list[Char], left: bool) -> _Num | None:
    """The digits at the row's left (or right) end, if they stand apart from the rest."""
    seq = row if left else row[::-1]
    digits: list[Char] = []
    for ch in seq:
        if not ch.text.isdigit():
            break
        if digits:
            prev = digits[-1]
            gap = ch.x0 - prev.x1 if left else prev.x0 - ch.x1
            if gap > 0.3 * max(ch.size, 1.0):
                break
        digits.append(ch)
    if not digits or len(digits) > MAX_DIGITS:
        return None
    if not left:
        digits.reverse()
    rest = row[len(digits) :] if left else row[: len(row) - len(digits)]
    size = statistics.median(c.size for c in digits)
    if rest:
        gap = rest[0].x0 - digits[-1].x1 if left else digits[0].x0 - rest[-1].x1
        if gap < MIN_GAP_EM * max(size, 1.0):
            return None
    try:
        value = int("".join(c.text for c in digits))
    except ValueError:  # digits of other scripts
        return None
    return _Num(
        value,
        digits,
        min(c.x0 for c in digits),
        max(c.x1 for c in digits),
        (digits[0].y0 + digits[0].y1) / 2,
        size,
        statistics.median(c.size for c in rest) if rest else 0.0,
    )


def _runs(nums: list[_Num], left: bool) -> list[list[_Num]]:
    """Numbers aligned on their outer edge, top to bottom, in runs of increasing values."""

    def key(n: _Num) -> float:
        return n.x1 if left else n.x0

    columns: list[list[_Num]] = []
    for n in sorted(nums, key=key):
        if columns and abs(key(n) - key(columns[-1][-1])) <= ALIGN_PT:
            columns[-1].append(n)
        else:
            columns.append([n])
    runs: list[list[_Num]] = []
    for col in columns:
        col.sort(key=lambda n: n.y)
        run: list[_Num] = []
        for n in col:
            if run and n.value <= run[-1].value:
                if len(run) >= MIN_RUN:
                    runs.append(run)
                run = []
            run.append(n)
        if len(run) >= MIN_RUN:
            runs.append(run)
    return runs


def _steady(run: list[_Num]) -> bool:
    """Numbered lines: down the run each step in value is that many lines further down,
    each at a line pitch the text's size allows (lists and displays add space between
    lines).  A column of values in a table goes up by whatever its data says."""
    size = statistics.median(n.row_size or n.size for n in run)
    lo, hi = MIN_PITCH_EM * size, MAX_PITCH_EM * size
    steps = list(itertools.pairwise(run))
    pitches = [(b.y - a.y) / (b.value - a.value) for a, b in steps]
    if sum(lo <= p <= hi for p in pitches) >= 0.8 * len(pitches):
        return True
    # numbered one by one, never closer than a line apart, in smaller type than the
    # text: lineno numbers the lines of text, and a displayed table or list between two
    # of them takes one number and many lines' height (an AAS page of displays,
    # 417-429, was left as text).  A contents page's chapter numbers, "4  特殊安装",
    # count one by one too, but at the size of their entries.
    sized = [n for n in run if n.row_size > 0]
    return (
        sum(b.value - a.value == 1 for a, b in steps) >= 0.8 * len(steps)
        and all(p >= lo for p in pitches)
        and bool(sized)
        and sum(n.size <= SMALLER * n.row_size for n in sized) >= 0.8 * len(sized)
    )


def _apart(run: list[_Num], rows: list[list[Char]], left: bool) -> bool:
    """In the page's margin, outside the edge where its lines start (or end), or set
    smaller than the text beside it (a numbered listing)."""
    sized = [n for n in run if n.row_size > 0]
    if sized and sum(n.size <= SMALLER * n.row_size for n in sized) >= 0.8 * len(sized):
        return True
    mine = {id(c) for n in run for c in n.chars}
    ends = []
    for row in rows:
        rest = [c for c in row if id(c) not in mine]
        if rest:
            ends.append(rest[0].x0 if left else rest[-1].x1)
    if len(ends) < MIN_RUN:
        return False
    ends.sort()
    if left:
        return max(n.x1 for n in run) < ends[len(ends) // 20]
    return min(n.x0 for n in run) > ends[-1 - len(ends) // 20]


def line_numbers(chars: Sequence[Char]) -> set[int]:
    """``id()`` of the characters that are line numbers in a margin."""
    rows = _rows(chars)
    found: set[int] = set()
    for left in (True, False):
        nums = [n for row in rows if (n := _edge_number(row, left)) is not None]
        if len(nums) < MIN_RUN:
            continue
        for run in _runs(nums, left):
            if _steady(run) and _apart(run, rows, left):
                found |= {id(c) for n in run for c in n.chars}
    return found
