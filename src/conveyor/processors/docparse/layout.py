"""Characters to lines to blocks: headings, columns and reading order.

Pure geometry, no PDF library: the text reader hands in characters with
their boxes and font size/weight, OCR hands in words; both come out as
blocks in reading order.  Coordinates are points, origin top-left.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from conveyor.processors.docparse.model import Block

# A line at least this much bigger than the page's body text is a heading.
HEADING_RATIO = 1.18
# A bold line no longer than this (and not ending a sentence) is a heading too.
BOLD_HEADING_MAX_CHARS = 90


@dataclass
class Char:
    text: str
    x0: float
    y0: float
    x1: float
    y1: float
    size: float = 0.0
    bold: bool = False
    mono: bool = False  # a fixed-pitch font: code, aligned by spaces
    math: bool = False  # set in a math font (TeX's cmmi/cmsy/cmex, Cambria Math, STIX...)
    caps: bool = False  # set in a small caps font


@dataclass
class Line:
    text: str
    x0: float
    y0: float
    x1: float
    y1: float
    size: float
    bold: bool
    column: int = 0
    chars: int = 0
    # the only line of its paragraph (OCR knows paragraphs; a text layer does not)
    solo: bool = False
    math: int = 0  # characters that are mathematics (font or symbol)
    caps: bool = False  # set in small caps
    # further from the line before it (in its column) than the page's lines usually are
    spaced: bool = False
    page_ref: bool = False  # ends with a page number (or category) set apart: a contents entry
    definition: bool = False  # ends with a category in brackets: a definition line

    @property
    def height(self) -> float:
        return self.y1 - self.y0


@dataclass
class _Builder:
    parts: list[str] = field(default_factory=list)
    x0: float = 0.0
    y0: float = 0.0
    x1: float = 0.0
    y1: float = 0.0
    sizes: list[float] = field(default_factory=list)
    bold: int = 0
    n: int = 0
    math: int = 0
    caps: int = 0

    def add(self, ch: Char) -> None:
        if self.n == 0:
            self.x0, self.y0, self.x1, self.y1 = ch.x0, ch.y0, ch.x1, ch.y1
        else:
            self.x0, self.y0 = min(self.x0, ch.x0), min(self.y0, ch.y0)
            self.x1, self.y1 = max(self.x1, ch.x1), max(self.y1, ch.y1)
        self.parts.append(ch.text)
        self.sizes.append(ch.size)
        self.bold += ch.bold
        self.math += is_math(ch)
        self.caps += ch.caps
        self.n += 1

    def extend(self, other: _Builder) -> None:
        """``other``'s characters after these, a space between (none between CJK)."""
        last = self.parts[-1][-1:] if self.parts else ""
        if not (is_cjk(last) and is_cjk(other.parts[0][:1])) and last != " ":
            self.parts.append(" ")
        self.parts.extend(other.parts)
        self.x0, self.y0 = min(self.x0, other.x0), min(self.y0, other.y0)
        self.x1, self.y1 = max(self.x1, other.x1), max(self.y1, other.y1)
        self.sizes.extend(other.sizes)
        self.bold += other.bold
        self.n += other.n
        self.math += other.math
        self.caps += other.caps

    def line(self) -> Line | None:
        text = "".join(self.parts).strip()
        if not text or self.n == 0:
            return None
        size = Counter(round(s, 1) for s in self.sizes).most_common(1)[0][0]
        return Line(
            text=text,
            x0=self.x0,
            y0=self.y0,
            x1=self.x1,
            y1=self.y1,
            size=size,
            bold=self.bold >= 0.8 * self.n,
            chars=self.n,
            math=self.math,
            caps=self.caps >= 0.8 * self.n,
        )


def is_math(ch: Char) -> bool:
    """A letter or digit set in a math font, or a mathematical symbol, Greek letter,
    arrow or math letter.  (TeX sets dot leaders with its math font's period.)"""
    if len(ch.text) != 1 or ch.mono:
        return False
    if ch.math and ch.text.isalnum():
        return True
    o = ord(ch.text)
    return (
        unicodedata.category(ch.text) == "Sm"
        or 0x0391 <= o <= 0x03C9  # Greek
        or 0x2190 <= o <= 0x22FF  # arrows, mathematical operators
        or 0x1D400 <= o <= 0x1D7FF  # mathematical alphanumerics
        or ch.text in "∂∇∞ℝℕℤℚℂ"
    )


def is_cjk(ch: str) -> bool:
    if not ch:
        return False
    o = ord(ch)
    return (
        0x4E00 <= o <= 0x9FFF
        or 0x3400 <= o <= 0x4DBF
        or 0x3000 <= o <= 0x303F
        or 0xFF00 <= o <= 0xFFEF
        or 0x20000 <= o <= 0x2A6DF
    )


def join_words(a: str, b: str) -> str:
    """Join two runs of text: no space between CJK characters, one otherwise."""
    if not a:
        return b
    if not b:
        return a
    if is_cjk(a[-1]) and is_cjk(b[0]):
        return a + b
    if a.endswith("-") and len(a) > 1 and a[-2].isalpha() and b[0].islower():
        return a[:-1] + b  # a word hyphenated at the end of a line
    return a + " " + b


# a gap this wide (of the font size) ends a line: a column gutter or a table's cell
LINE_GAP_EM = 1.5
# a narrower gap ends a line only where a page's columns meet (see columns_lines)
TIGHT_GAP_EM = 0.8
LEADERS = frozenset(".·…_-")


def chars_to_lines(chars: Iterable[Char], *, max_gap_em: float = LINE_GAP_EM) -> list[Line]:
    """Group characters (in content order) into lines of text.

    A line ends at a line break, a jump in height, a step backwards, or a
    horizontal gap wide enough to be a column gutter (``max_gap_em``).
    """
    return [ln for b, _soft in _pieces(chars, max_gap_em) if (ln := b.line()) is not None]


def _pieces(chars: Iterable[Char], max_gap_em: float) -> list[tuple[_Builder, float | None]]:
    """The lines as builders, each with the size of the gap that ended the one before
    when that gap alone (over ``max_gap_em``, under ``LINE_GAP_EM``) ended it."""
    out: list[tuple[_Builder, float | None]] = []
    cur = _Builder()
    pending_space = False
    soft: float | None = None
    # the height the characters since the last hard break span: a piece after a soft
    # break is judged against the whole line, as it would be without the break
    band = (0.0, 0.0)

    def flush(next_soft: float | None) -> None:
        nonlocal cur, pending_space, soft
        if cur.n:
            out.append((cur, soft))
        cur = _Builder()
        pending_space = False
        soft = next_soft

    for ch in chars:
        if ch.text in ("\r", "\n"):
            flush(None)
            continue
        if ch.text.isspace() or ch.x1 <= ch.x0:
            if ch.text.isspace() and cur.n:
                pending_space = True
            continue
        if cur.n:
            size = max(ch.size, 1.0)
            mid_ch, mid_cur = (ch.y0 + ch.y1) / 2, (band[0] + band[1]) / 2
            line_h = max(band[1] - band[0], ch.y1 - ch.y0, size * 0.5)
            gap = ch.x0 - cur.x1
            if abs(mid_ch - mid_cur) > 0.6 * line_h or gap < -size or gap > LINE_GAP_EM * size:
                flush(None)
            elif gap > max_gap_em * size:
                flush(size)
            elif not pending_space and gap > 0.25 * size:
                pending_space = True
        if cur.n == 0 and soft is None:  # a new line (not a piece after a soft break)
            band = (ch.y0, ch.y1)
        if pending_space and cur.n:
            last = cur.parts[-1][-1:] if cur.parts else ""
            if not (is_cjk(last) and is_cjk(ch.text[:1])) and last != " ":
                cur.parts.append(" ")
        pending_space = False
        cur.add(ch)
        band = (min(band[0], ch.y0), max(band[1], ch.y1))
    flush(None)
    return out


def columns_lines(chars: Sequence[Char], page_w: float) -> list[Line]:
    """The page's lines, none running across a gutter between its columns.

    Where a page's columns stand close (the IRS sets three 13 pt apart in 9.5 pt
    type), a line of one column and the line beside it in the next, drawn one
    after the other, are closer than a gutter's ``LINE_GAP_EM`` and would read as
    one line across both.  So the gutters are found among lines cut at every gap
    of ``TIGHT_GAP_EM`` (where such lines leave them clear), and those pieces are
    then joined back into lines except where the gap lies over a gutter."""
    pieces = _pieces(chars, TIGHT_GAP_EM)
    if not any(soft for _, soft in pieces):
        return [ln for b, _ in pieces if (ln := b.line()) is not None]
    tight = [ln for b, _ in pieces if (ln := b.line()) is not None]
    gutters: list[float] = []
    _order_region(
        sorted(tight, key=lambda ln: (round(ln.y0 / 2), ln.x0)), 0.0, page_w, page_w, 0, [], gutters
    )
    joined: list[_Builder] = []
    for b, soft in pieces:
        prev = joined[-1] if joined else None
        if (
            prev is not None
            and soft is not None
            and not (
                b.parts[0][:1] not in LEADERS  # a column's line, not a contents' leader
                and any(prev.x1 < g < b.x0 for g in gutters)
            )
        ):
            prev.extend(b)
            continue
        joined.append(b)
    return [ln for b in joined if (ln := b.line()) is not None]


def size_counts(lines: Sequence[Line]) -> Counter[float]:
    """Characters per size (to half a point)."""
    counts: Counter[float] = Counter()
    for ln in lines:
        counts[round(ln.size * 2) / 2] += ln.chars
    return counts


def body_size(lines: Sequence[Line]) -> float:
    """The size most characters are set in."""
    counts = size_counts(lines)
    return counts.most_common(1)[0][0] if counts else 0.0


# a category in brackets set at the right margin: "[Method on Array<T>]", "[Function]"
BRACKETED_LABEL = re.compile(r"^\[[^\[\]]*[^\W\d_][^\[\]]*\]$")


def find_gutter(lines: Sequence[Line], page_w: float, left_x: float = 0.0) -> float | None:
    """The x of a gap between two columns, or None for a one-column page (or region:
    the stretch from ``left_x``, ``page_w`` wide).

    A gutter is the widest stretch of the region's middle band crossed by the
    fewest lines; it counts if few lines cross it (titles and full-width
    paragraphs may) and at least three lines with a letter sit wholly on each side.
    """
    if len(lines) < 6 or page_w <= 0:
        return None
    lo, hi = int(left_x + page_w * 0.25), int(left_x + page_w * 0.75)
    cover = [0] * (hi - lo + 1)
    for ln in lines:
        a, b = max(lo, int(ln.x0)), min(hi, int(ln.x1 + 0.999))
        for x in range(a, b + 1):
            cover[x - lo] += 1
    limit = max(2, len(lines) // 5)
    # a side counts lines with a letter: the page numbers down a contents page's right
    # edge (Texinfo's bold entries, no leader dots) are not a column of their own, nor
    # are the categories in brackets at the right margin of its definition lines
    worded = [
        ln
        for ln in lines
        if any(c.isalpha() for c in ln.text) and not BRACKETED_LABEL.match(ln.text)
    ]
    best: tuple[int, int, float] | None = None  # (crossing lines, -width, x)
    start = 0
    for i in range(1, len(cover) + 1):
        if i < len(cover) and cover[i] == cover[start]:
            continue
        width, crossing = i - start, cover[start]
        mid = lo + (start + i) / 2
        if crossing <= limit and width >= 4:
            left = sum(1 for ln in worded if ln.x1 <= mid)
            right = sum(1 for ln in worded if ln.x0 >= mid)
            if left >= 3 and right >= 3:
                key = (crossing, -width, mid)
                if best is None or key < best:
                    best = key
        start = i
    return best[2] if best else None


# a side of a gutter this wide (of the page) may hold columns of its own: a page of
# three columns splits into one and two, then the two (a column's key/description
# pairs, narrower, are not columns)
SUBCOLUMN_MIN_SHARE = 0.55


def reading_order(lines: Sequence[Line], page_w: float) -> list[Line]:
    """Top to bottom; on a page of columns, column by column between full-width lines.

    A side of a gutter wide enough to hold columns of its own is ordered the same
    way, so three columns read as three (an IRS booklet, a reference card), not as
    one and a second read across two."""
    by_y = sorted(lines, key=lambda ln: (round(ln.y0 / 2), ln.x0))
    out: list[Line] = []
    _order_region(by_y, 0.0, page_w, page_w, 0, out)
    return out


def _order_region(
    by_y: list[Line],
    left_x: float,
    width: float,
    page_w: float,
    column: int,
    out: list[Line],
    gutters: list[float] | None = None,
) -> None:
    """Append ``by_y`` (sorted top to bottom) in reading order; ``column`` numbers the
    region, its sides get numbers of their own (paragraphs never join across them).
    The gutters found go to ``gutters``."""
    gutter = find_gutter(by_y, width, left_x) if by_y else None
    if gutter is None:
        for ln in by_y:
            ln.column = column
        out.extend(by_y)
        return
    if gutters is not None:
        gutters.append(gutter)
    sides = (
        (left_x, gutter - left_x, column * 3 + 1),
        (gutter, left_x + width - gutter, column * 3 + 2),
    )
    left: list[Line] = []
    right: list[Line] = []

    def flush() -> None:
        for group, (x, w, col) in zip((left, right), sides, strict=True):
            if w >= SUBCOLUMN_MIN_SHARE * page_w:
                _order_region(group, x, w, page_w, col, out, gutters)
            else:
                for ln in group:
                    ln.column = col
                out.extend(group)
        left.clear()
        right.clear()

    for ln in by_y:
        if ln.x1 <= gutter:
            left.append(ln)
        elif ln.x0 >= gutter:
            right.append(ln)
        else:  # spans the gutter: a title or a full-width paragraph ends the band
            flush()
            ln.column = column
            out.append(ln)
    flush()


# "2.", "3.1", "3.1.2.", "A.", "IV." and a capital: how numbered headings start
NUMBERED = re.compile(
    r"^(?:\d{1,2}(?:\.\d{1,2}){0,3}\.?|[A-Z](?:\.\d{1,2}){1,3}\.?|[A-Z]\.|[IVX]{1,5}\.)\s+\S"
)
HEADING_MAX_WORDS = 12


def _is_heading(ln: Line, body: float, ratio: float, bold_headings: bool) -> bool:
    """Bigger than the body text; or, at about its size, a short line that does not end
    like a sentence and stands out: bold, small caps or all capitals, or numbered like
    a section and set apart from the line before."""
    if body <= 0 or not any(c.isalpha() for c in ln.text):
        return False  # a row of figures ("5,750 573 573") is never a heading
    if ln.page_ref or ENDS_WITH_LEADER.search(ln.text):
        return False  # a contents entry
    if ln.size >= body * ratio:
        return len(ln.text) <= 200
    if ln.solo and _looks_like_title(ln.text) and ln.size >= 0.9 * body:
        return True
    if not bold_headings or ln.size < body * 0.85 or ln.text.endswith(SENTENCE_END):
        return False
    if ln.bold and ln.size >= body * 0.95 and len(ln.text) <= BOLD_HEADING_MAX_CHARS:
        return True
    words = ln.text.split()
    if len(words) > HEADING_MAX_WORDS or not any(c.isalpha() for c in ln.text):
        return False
    numbered = bool(NUMBERED.match(ln.text))
    capitals = _all_capitals(ln.text)
    if ln.caps and (numbered or ln.spaced or capitals):
        return True  # small caps: "1. Introduction" in AAS's and many journals' style
    if capitals and (numbered or ln.spaced):
        return True
    first = words[1] if numbered and len(words) > 1 else words[0]
    return numbered and ln.spaced and first[:1].isupper()


SENTENCE_END = (".", ",", ":", ";", "。", "，", "：", "；")


def _all_capitals(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    return len(letters) >= 4 and all(c.isupper() for c in letters)


# a line this much mathematics (and at least this many symbols) is a displayed formula
EQUATION_SHARE = 0.4
EQUATION_MIN_MATH = 3


def _is_equation(ln: Line) -> bool:
    return (
        ln.math >= EQUATION_MIN_MATH
        and ln.math >= EQUATION_SHARE * max(1, len(ln.text.replace(" ", "")))
        and len(ln.text) <= 200
    )


def _looks_like_title(text: str) -> bool:
    """A short line that starts like a heading and does not end like a sentence."""
    words = text.split()
    return (
        0 < len(words) <= 8
        and (text[0].isupper() or text[0].isdigit())
        and not text.endswith((".", ",", ":", ";", "。", "，", "：", "；"))
        and any(c.isalpha() for c in text)
    )


EQUATION_NUMBER = re.compile(r"^\(\s*[A-Z]?\d{1,3}(?:\.\d{1,3})?[a-z]?\s*\)$")


def _bare(ln: Line) -> int:
    return len(ln.text.replace(" ", ""))


def _mathy(ln: Line) -> bool:
    return _is_equation(ln) or (ln.math >= 2 and ln.math >= 0.3 * max(1, _bare(ln)))


def _fragment(ln: Line) -> bool:
    """A piece of a displayed formula as the text layer cuts it: a superscript, a
    fraction's numerator, an equation's number."""
    return _mathy(ln) or _bare(ln) <= 3 or bool(EQUATION_NUMBER.match(ln.text))


PAGE_NUMBER = re.compile(r"^(?:\d{1,4}|[ivxlc]{1,6})$")
ENDS_WITH_LEADER = re.compile(r"(?:\.\s?){3,}\s*(?:\d{1,4}|[ivxlc]{1,6})$")


def join_row_numbers(lines: Sequence[Line]) -> list[Line]:
    """A number alone at the right of a row (a contents entry's page, far from its title)
    goes back on that row: the text layer's gap before it ended the line, and it came
    out as a paragraph of one number.  So does a category in brackets at the right
    margin (Texinfo's definition lines: "int length (void) const  [Method on Array<T>]"),
    which otherwise made a paragraph of every category on a page, and a number alone
    at the left of a row (a contents entry's own number, "1  CTEX 是干什么的？ … 5").
    The row is looked for among the last few lines read: a number whose box sits a
    little lower than the entry's taller CJK glyphs is read after it."""
    out: list[Line] = []
    for ln in lines:
        label = bool(BRACKETED_LABEL.match(ln.text))
        if not (label or PAGE_NUMBER.match(ln.text)):
            out.append(ln)
            continue
        mid = (ln.y0 + ln.y1) / 2
        for k in range(len(out) - 1, max(-1, len(out) - 4), -1):
            prev = out[k]
            if prev.column != ln.column or PAGE_NUMBER.match(prev.text):
                continue
            if abs((prev.y0 + prev.y1) / 2 - mid) >= 0.5 * max(ln.size, 1.0):
                continue
            right = prev.x1 < ln.x0
            if not right and (label or not ln.text.isdigit() or ln.x1 >= prev.x0):
                continue  # at the left only an entry's number, not a Roman 'x' of a formula
            out[k] = Line(
                text=f"{prev.text} {ln.text}" if right else f"{ln.text} {prev.text}",
                x0=min(prev.x0, ln.x0),
                y0=min(prev.y0, ln.y0),
                x1=max(prev.x1, ln.x1),
                y1=max(prev.y1, ln.y1),
                size=prev.size,
                bold=prev.bold,
                column=prev.column,
                chars=prev.chars + ln.chars,
                solo=prev.solo,
                math=prev.math,
                caps=prev.caps,
                page_ref=prev.page_ref or right,
                definition=prev.definition or label,
            )
            break
        else:
            out.append(ln)
    return out


def join_displays(lines: Sequence[Line]) -> list[Line]:
    """Displayed formulas in one piece: the lines the text layer cuts a formula into (its
    numerators and denominators, sub- and superscripts, its number at the right) that
    follow each other in reading order, in one column and close together, become one
    line, which is an equation when it holds enough mathematics.

    A run is started by a line that is mathematics (in a math font, or symbols) and
    takes the fragments around it; a run with too little mathematics is left as it was.
    """
    out: list[Line] = []
    i = 0
    while i < len(lines):
        ln = lines[i]
        if not _fragment(ln):
            out.append(ln)
            i += 1
            continue
        j = i + 1
        x0, y0, x1, y1 = ln.x0, ln.y0, ln.x1, ln.y1
        while j < len(lines):
            nxt = lines[j]
            size = max(nxt.size, ln.size, 1.0)
            last = lines[j - 1]
            # a short piece on the row of the formula's last piece, right after it, is
            # part of it though it holds little mathematics ("(p1)," before "(4)")
            beside = (
                _bare(nxt) <= 12
                and nxt.x0 >= last.x1 - 1.0
                and abs((nxt.y0 + nxt.y1) / 2 - (last.y0 + last.y1) / 2) < 0.5 * size
            )
            if (
                not (_fragment(nxt) or beside)
                or nxt.column != ln.column
                or nxt.y0 > y1 + 0.8 * size
                or nxt.y1 < y0 - 1.5 * size
            ):
                break
            x0, y0, x1, y1 = min(x0, nxt.x0), min(y0, nxt.y0), max(x1, nxt.x1), max(y1, nxt.y1)
            j += 1
        run = lines[i:j]
        math = sum(r.math for r in run)
        if len(run) < 2 or not any(_mathy(r) for r in run) or math < EQUATION_MIN_MATH:
            out.append(ln)
            i += 1
            continue
        ordered = sorted(run, key=lambda r: (round((r.y0 + r.y1) / 2 / max(r.size, 1.0)), r.x0))
        text = " ".join(r.text for r in ordered)
        out.append(
            Line(
                text=text,
                x0=x0,
                y0=y0,
                x1=x1,
                y1=y1,
                size=max(r.size for r in run),
                bold=False,
                column=ln.column,
                chars=sum(r.chars for r in run),
                # every piece of a formula counts: its digits and brackets too
                math=max(math, int(EQUATION_SHARE * len(text.replace(" ", ""))) + 1),
            )
        )
        i = j
    return out


def _mark_spaced(lines: Sequence[Line]) -> None:
    """Mark the lines further below the line before them (in their column) than the
    page's lines usually are: headings are set apart, list items and paragraphs not."""
    gaps: list[float] = []
    last: dict[int, Line] = {}
    pairs: list[tuple[Line, float | None]] = []
    for ln in lines:
        before = last.get(ln.column)
        gap = ln.y0 - before.y1 if before is not None else None
        if gap is not None and 0 <= gap < 1.5 * max(ln.size, 1.0):
            gaps.append(gap)
        pairs.append((ln, gap))
        last[ln.column] = ln
    usual = sorted(gaps)[len(gaps) // 2] if gaps else 0.0
    for ln, gap in pairs:
        ln.spaced = gap is None or gap >= usual + 0.3 * max(ln.size, 1.0)


def lines_to_blocks(
    lines: Sequence[Line],
    body: float,
    *,
    heading_ratio: float = HEADING_RATIO,
    bold_headings: bool = True,
) -> list[Block]:
    """Merge ordered lines into paragraphs and headings."""
    blocks: list[Block] = []
    cur: Block | None = None
    prev: Line | None = None
    recent: list[tuple[Block, Line]] = []  # the last paragraphs and their last lines
    lines = join_row_numbers(join_displays(lines))
    _mark_spaced(lines)
    for ln in lines:
        if _is_equation(ln):
            kind = "equation"
        else:
            kind = "title" if _is_heading(ln, body, heading_ratio, bold_headings) else "text"
        joinable = _joins(cur, prev, ln, kind)
        if (
            not joinable
            and kind == "text"
            and cur is not None
            and cur.type == "title"
            and prev is not None
            and prev.bold == ln.bold
            and any(c.isalpha() for c in prev.text)
            and not any(c.isalpha() for c in ln.text)
            and len(ln.text) <= 12
            and _joins(cur, prev, ln, "title")
        ):
            kind, joinable = "title", True  # a heading's last line of figures ("June 4, / 2004")
        if not joinable and kind == "text":
            found = _block_above(ln, recent, prev)
            if found is not None:
                cur, prev = found
                joinable = True
        if joinable and cur is not None:
            cur.text = join_words(cur.text, ln.text)
            cur.lines += 1
            x0, y0, x1, y1 = cur.bbox
            cur.bbox = (min(x0, ln.x0), min(y0, ln.y0), max(x1, ln.x1), max(y1, ln.y1))
            recent = [(b, ln if b is cur else last) for b, last in recent]
        else:
            cur = Block(
                type=kind,
                bbox=(ln.x0, ln.y0, ln.x1, ln.y1),
                text=ln.text,
                size=ln.size,
                bold=ln.bold,
                by_size=kind == "title" and ln.size >= body * heading_ratio,
                contents=ln.page_ref or bool(ENDS_WITH_LEADER.search(ln.text)),
            )
            blocks.append(cur)
            recent = [*recent[1 - LOOKBACK_BLOCKS :], (cur, ln)]
        prev = ln
    return blocks


def _joins(cur: Block | None, prev: Line | None, ln: Line, kind: str) -> bool:
    """``ln``, of ``kind``, goes on the block ``cur`` whose last line is ``prev``."""
    return (
        cur is not None
        and prev is not None
        and cur.type == kind
        and prev.column == ln.column
        and abs(prev.size - ln.size) < 0.6
        and 0 - 0.5 * ln.size <= ln.y0 - prev.y1 <= 0.9 * max(ln.size, prev.size)
        and (kind == "text" or len(cur.text) + len(ln.text) < 200)
        and not ENDS_WITH_LEADER.search(prev.text)
        # a definition line (its category set apart at the row's right) is a
        # paragraph of its own, as each of Texinfo's is a line of its own
        and not prev.definition
        # a heading numbered like a section starts a heading of its own ("A
        # RESEARCH METHODS" over "A.1 Part One" are two)
        and not (kind == "title" and NUMBERED.match(ln.text))
    )


# how many paragraphs back a line may find the one it continues (see _block_above)
LOOKBACK_BLOCKS = 4


def _block_above(
    ln: Line, recent: list[tuple[Block, Line]], prev: Line | None
) -> tuple[Block, Line] | None:
    """The paragraph ``ln`` continues though other lines were read in between: its last
    line stands right above ``ln`` in the same column, and what was read since lies
    beside ``ln``, not above it.  A table's header cells of several lines, read row
    by row where no gutter splits them, are each one paragraph, not a word a line."""
    for k in range(len(recent) - 1, -1, -1):
        block, last = recent[k]
        if last is prev or block.type != "text" or block.contents:
            continue  # the line just read, or a contents entry: as lines_to_blocks decided
        if last.column != ln.column or abs(last.size - ln.size) >= 0.6:
            continue
        if ENDS_WITH_LEADER.search(last.text):
            continue
        if not 0 - 0.5 * ln.size <= ln.y0 - last.y1 <= 0.9 * max(ln.size, last.size):
            continue
        narrow = min(ln.x1 - ln.x0, last.x1 - last.x0)
        if narrow <= 0 or min(ln.x1, last.x1) - max(ln.x0, last.x0) < 0.5 * narrow:
            continue
        if any(min(ln.x1, b.bbox[2]) > max(ln.x0, b.bbox[0]) for b, _ in recent[k + 1 :]):
            continue  # something read since lies between them
        return block, last
    return None


def inside(x: float, y: float, box: tuple[float, float, float, float], pad: float = 0.0) -> bool:
    return box[0] - pad <= x <= box[2] + pad and box[1] - pad <= y <= box[3] + pad


def shared_area(
    a: tuple[float, float, float, float], b: tuple[float, float, float, float]
) -> float:
    """The area two boxes have in common."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def order_blocks(blocks: list[Block], anchored: list[Block], page_w: float) -> list[Block]:
    """Insert tables and images among the text blocks by their top edge, within their column."""
    if not anchored:
        return blocks
    out = list(blocks)
    before: Block | None = None
    for extra in sorted(anchored, key=lambda b: b.bbox[1]):
        pos = len(out)
        for i, b in enumerate(out):
            same_column = b.bbox[0] < extra.bbox[2] and extra.bbox[0] < b.bbox[2]
            if b.bbox[1] > extra.bbox[1] and (same_column or b.bbox[2] - b.bbox[0] > page_w / 2):
                pos = i
                break
        if before is not None and _beside(before, extra):
            # side by side (a tax table's three panels): left to right, whichever
            # footer line under each one the page's text happened to read first
            pos = max(pos, out.index(before) + 1)
        out.insert(pos, extra)
        before = extra
    return out


def _beside(left: Block, right: Block) -> bool:
    """``right`` stands to the right of ``left``, on the same rows."""
    overlap = min(left.bbox[3], right.bbox[3]) - max(left.bbox[1], right.bbox[1])
    height = min(left.bbox[3] - left.bbox[1], right.bbox[3] - right.bbox[1])
    return left.bbox[2] <= right.bbox[0] and height > 0 and overlap >= 0.5 * height
