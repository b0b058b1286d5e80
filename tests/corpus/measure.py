"""How far a parser's Markdown is from an independent reading of the same PDF pages.

The references are poppler's, not PDFium's (the lite engine reads with PDFium):
``pdftotext -layout`` for the words, plain ``pdftotext`` (its reading order:
columns one after the other) for the order, and the PDF's outline for the
headings. bench/docparse_real.py prints these figures; the regression tests in
tests/integration/docparse/test_real_corpus.py assert on them.

- **Tokens**: the text is NFKC-normalised (ligatures, mathematical italic
  letters, full-width forms become plain letters) and lower-cased; every CJK
  ideograph is a token of its own and every other run of letters and digits is
  one. Punctuation, Markdown syntax and whitespace are not tokens.
- **Word recall / precision**: the multisets of tokens (for a document whose lines are
  numbered in the margin, the reference without those numbers: issue 16 asks a
  parser to leave them out, and they were 0.5 % of a page's words, costing
  the lite engine its 0.95 on AAS's sample): matched = sum over
  tokens of min(reference count, candidate count); recall = matched / reference
  tokens, precision = matched / candidate tokens. A word hyphenated at a line
  end is two tokens in poppler's text; where the candidate joined it
  ("connec-" "tion" -> "connection") the reference counts it joined too, so
  neither way of writing it costs anything. Plain ``pdftotext`` joins most such
  words itself; then the broken piece at a line's end in the ``-layout`` text
  (before its end or the gap to the next column) and the candidate's joined word
  that starts with it and ends with a piece the reference has are the same.
- **Reading order**: the token 3-grams that occur exactly once in the
  reference (plain ``pdftotext``) and exactly once in the candidate are
  anchors; the score is the longest run of anchors that appear in the same
  order in both (the longest increasing subsequence of their candidate
  positions, taken in reference order) divided by the number of anchors.
  1.0 is the reference's order; a page read right column first scores about
  0.5 on that page. Under 20 anchors: no score.
- **Headings**: Markdown lines starting with ``#`` (emitted). An outline entry
  pointing into the pages is *found* when some emitted heading, both stripped
  of section numbering, is the same text or at least 85 % similar
  (difflib ratio); each heading matches one entry at most.
- **Tables**: pipe tables (their ``|---|`` separator line) plus HTML
  ``<table>`` elements in the Markdown.
- **One-word paragraphs**: blocks of the Markdown between blank lines that are
  not headings, tables, pictures, formulas or code, and hold exactly one token;
  their share of all such blocks that hold any token.
- **Control characters**: code points of Unicode category Cc other than tab,
  line feed and carriage return (PDFium's U+0002 hyphen marker is one), plus
  lone surrogates (Cs).
"""

from __future__ import annotations

import difflib
import re
import subprocess
import unicodedata
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
TOKEN = re.compile(rf"[{CJK}]|[^\W_{CJK}]+")
CJK_CHAR = re.compile(rf"[{CJK}]")
LATIN_WORD = re.compile(r"[A-Za-z]{2,}")
HYPHENATED = re.compile(r"([^\W\d_]+)-[ \t]*\n[ \t]*([^\W\d_]+)")
# a word's piece broken at a line's end, as pdftotext -layout writes it: before the
# line's end or the gap to the next column
LINE_END_PIECE = re.compile(r"(?<![\w-])([^\W\d_]{2,})-(?:[ \t]*\n| {2,})")


def normalise(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower()


def tokens(text: str) -> list[str]:
    return TOKEN.findall(normalise(text))


def runs(pages: Iterable[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for p in pages:
        if out and p == out[-1][1] + 1:
            out[-1] = (out[-1][0], p)
        else:
            out.append((p, p))
    return out


def pdftotext(path: Path, pages: Iterable[int], *, layout: bool = False) -> str:
    """poppler's text of ``pages`` (1-based), in its reading order or, with layout, as laid out."""
    parts = []
    for first, last in runs(pages):
        cmd = ["pdftotext", "-f", str(first), "-l", str(last), "-enc", "UTF-8"]
        cmd += ["-layout"] if layout else []
        r = subprocess.run([*cmd, str(path), "-"], capture_output=True, check=True)
        parts.append(r.stdout.decode("utf-8", errors="replace"))
    return "\n".join(parts)


# the HTML the engines write (tables, super/subscripts, breaks); not "<x>" or "a < b > c"
HTML_TAG = re.compile(
    r"</?(?:table|thead|tbody|tr|td|th|sup|sub|br|span|b|i|em|strong|p|div|img|code)\b[^<>\n]*>",
    re.I,
)


def markdown_text(md: str) -> str:
    """The Markdown's words: no picture paths, link targets, HTML tags or formula fences."""
    md = re.sub(r"!\[[^\]]*\]\([^)]*\)", " ", md)
    md = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", md)
    md = HTML_TAG.sub(" ", md)
    return md.replace("$$", " ")


@dataclass
class WordScore:
    matched: int
    reference: int
    candidate: int

    @property
    def recall(self) -> float:
        return self.matched / self.reference if self.reference else 1.0

    @property
    def precision(self) -> float:
        return self.matched / self.candidate if self.candidate else 1.0


def word_score(
    reference_layout: str,
    reference_order: str,
    candidate: str,
    leave_out: Counter[str] | None = None,
) -> WordScore:
    """Token multisets of ``pdftotext -layout`` and the candidate's text (Markdown stripped);
    ``leave_out``: tokens of the reference that are not the page's words (line numbers)."""
    ref = Counter(tokens(reference_layout))
    if leave_out:
        ref -= leave_out
    out = Counter(tokens(markdown_text(candidate)))
    # a word broken at a line end: count it joined where the candidate joined it
    joined_left = Counter(out)
    for a, b in HYPHENATED.findall(normalise(reference_order)):
        word = a + b
        if joined_left[word] > 0 and ref[a] > 0 and ref[b] > 0:
            joined_left[word] -= 1
            ref[a] -= 1
            ref[b] -= 1
            ref[word] += 1
    # poppler's plain text joins most hyphenated words itself ("existing"), and its
    # layout text keeps them broken ("ex-" at a line's end, "isting" on the next, often
    # with the other column between): a candidate's joined word made of a broken
    # line-end piece and the piece after it counts as that word
    for a in LINE_END_PIECE.findall(normalise(reference_layout)):
        if ref[a] <= 0:
            continue
        for word in [w for w, n in joined_left.items() if n > ref[w] and w.startswith(a)]:
            b = word[len(a) :]
            if b and ref[b] > 0 and TOKEN.fullmatch(b):
                joined_left[word] -= 1
                ref[a] -= 1
                ref[b] -= 1
                ref[word] += 1
                break
    matched = sum(min(n, out[t]) for t, n in ref.items())
    return WordScore(matched, sum(ref.values()), sum(out.values()))


def order_score(reference: str, candidate: str, n: int = 3) -> float | None:
    """Share of unique token n-grams met in the reference's order (see the module docstring)."""
    ref, out = tokens(reference), tokens(markdown_text(candidate))

    def unique_grams(seq: list[str]) -> dict[tuple[str, ...], int]:
        seen: Counter[tuple[str, ...]] = Counter()
        first: dict[tuple[str, ...], int] = {}
        for i in range(len(seq) - n + 1):
            g = tuple(seq[i : i + n])
            seen[g] += 1
            first.setdefault(g, i)
        return {g: i for g, i in first.items() if seen[g] == 1}

    a, b = unique_grams(ref), unique_grams(out)
    anchors = sorted((i, b[g]) for g, i in a.items() if g in b)
    if len(anchors) < 20:
        return None
    tails: list[int] = []  # longest increasing subsequence of candidate positions
    for _, pos in anchors:
        k = bisect_left(tails, pos)
        if k == len(tails):
            tails.append(pos)
        else:
            tails[k] = pos
    return len(tails) / len(anchors)


@dataclass
class Blocks:
    headings: list[str]
    tables: int
    paragraphs: int  # blocks of text holding a token
    one_word: int

    @property
    def one_word_share(self) -> float:
        return self.one_word / self.paragraphs if self.paragraphs else 0.0


TABLE_RULE = re.compile(r"^\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)+\|?\s*$")


def blocks(md: str) -> Blocks:
    headings: list[str] = []
    tables = len(re.findall(r"<table\b", md, flags=re.I))
    paragraphs = one_word = 0
    in_code = False
    block: list[str] = []

    def flush() -> None:
        nonlocal paragraphs, one_word
        text = " ".join(block).strip()
        block.clear()
        if not text or text.startswith(("|", "<table", "<", "![", "$$")):
            return
        n = len(tokens(markdown_text(text)))
        if n:
            paragraphs += 1
            one_word += n == 1

    for line in md.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            in_code = not in_code
            flush()
            continue
        if in_code:
            continue
        if TABLE_RULE.match(stripped):
            tables += 1
        if re.match(r"#{1,6}\s", stripped):
            flush()
            headings.append(re.sub(r"^#{1,6}\s+", "", stripped))
        elif not stripped or set(stripped) <= set("-*_=") or stripped.startswith(("|", "<")):
            flush()
        else:
            block.append(stripped)
    flush()
    return Blocks(headings, tables, paragraphs, one_word)


NUMBERING = re.compile(r"^(?:(?:\d+|[ivxlc]+|[a-z])(?:[.\-]\d+)*[.)]?\s+)+", re.I)


def heading_key(text: str) -> str:
    text = markdown_text(text).replace("*", " ").replace("_", " ")
    text = " ".join(normalise(text).split())
    return NUMBERING.sub("", text).strip(" .:")


def headings_found(expected: list[str], emitted: list[str]) -> int:
    """How many outline titles an emitted heading matches (one heading, one title)."""
    left = [heading_key(h) for h in emitted]
    found = 0
    for title in expected:
        key = heading_key(title)
        if not key:
            continue
        best, best_i = 0.0, -1
        for i, h in enumerate(left):
            if not h:
                continue
            r = 1.0 if h == key else difflib.SequenceMatcher(None, key, h).ratio()
            if r > best:
                best, best_i = r, i
        if best >= 0.85:
            found += 1
            left[best_i] = ""
    return found


def control_chars(text: str) -> int:
    return sum(1 for c in text if c not in "\t\n\r" and unicodedata.category(c) in ("Cc", "Cs"))


def cjk_share(text: str) -> float:
    """CJK ideographs among the text's letters (CJK and Latin)."""
    cjk = len(CJK_CHAR.findall(text))
    latin = len(re.findall(r"[A-Za-z]", text))
    return cjk / (cjk + latin) if cjk + latin else 0.0


@dataclass
class Line:
    """A line of poppler's reading of a page: its text and box (0-1000 of the page, top-left)."""

    text: str
    box: tuple[float, float, float, float]


def page_lines(path: Path, page: int) -> list[Line]:
    """``pdftotext -bbox-layout`` lines of one page (1-based)."""
    import html

    r = subprocess.run(
        ["pdftotext", "-bbox-layout", "-f", str(page), "-l", str(page), str(path), "-"],
        capture_output=True,
        check=True,
    )
    xml = r.stdout.decode("utf-8", errors="replace")
    size = re.search(r'<page width="([\d.]+)" height="([\d.]+)"', xml)
    if size is None:
        return []
    w, h = float(size[1]), float(size[2])
    out = []
    for m in re.finditer(
        r'<line xMin="([\d.]+)" yMin="([\d.]+)" xMax="([\d.]+)" yMax="([\d.]+)">(.*?)</line>',
        xml,
        flags=re.S,
    ):
        words = [html.unescape(x) for x in re.findall(r"<word [^>]*>(.*?)</word>", m[5])]
        x0, y0, x1, y1 = (float(m[i]) for i in range(1, 5))
        box = (x0 * 1000 / w, y0 * 1000 / h, x1 * 1000 / w, y1 * 1000 / h)
        out.append(Line(" ".join(words), box))
    return out


def margin_numbers(path: Path, pages: Iterable[int]) -> Counter[str]:
    """The tokens of line numbers in the side margins of ``pages`` (1-based): poppler's
    lines that are one number alone and lie wholly outside where the page's lines of
    text start (left) or end (right), both taken at the 5th percentile so a stray line
    does not move them.  A folio at the text's edge is inside them, not counted."""
    out: Counter[str] = Counter()
    for page in pages:
        lines = page_lines(path, page)
        texty = [ln for ln in lines if re.search(r"[^\W\d_]", ln.text)]
        if len(texty) < 5:
            continue
        starts = sorted(ln.box[0] for ln in texty)
        ends = sorted(ln.box[2] for ln in texty)
        left, right = starts[len(starts) // 20], ends[-1 - len(ends) // 20]
        for ln in lines:
            text = ln.text.strip()
            if re.fullmatch(r"\d{1,5}", text) and (ln.box[2] < left or ln.box[0] > right):
                out[text] += 1
    return out


@dataclass
class CjkLines:
    lines: int  # reference lines that are Chinese (4+ ideographs, most of their letters)
    as_latin: int  # read as Latin: what the candidate has there is mostly Latin letters
    missed: int  # nothing of the candidate's lies there
    examples: list[str]


def cjk_lines_read_as_latin(
    reference: list[Line], items: list[tuple[tuple[float, float, float, float], str]]
) -> CjkLines:
    """Each Chinese reference line against the candidate's text blocks (box, text) over it.

    A block lies over a line when it covers half the line's height and a third of
    its width. The line was *read as Latin* when the text of the blocks over it
    is less than 30 % CJK among its letters (a bold Chinese line that OCR turned
    into "Ee RRA"), and *missed* when no block lies over it.
    """
    result = CjkLines(0, 0, 0, [])
    for line in reference:
        n_cjk = len(CJK_CHAR.findall(line.text))
        if n_cjk < 4 or cjk_share(line.text) < 0.5:
            continue
        result.lines += 1
        lx0, ly0, lx1, ly1 = line.box
        over = []
        for (x0, y0, x1, y1), text in items:
            dy = min(ly1, y1) - max(ly0, y0)
            dx = min(lx1, x1) - max(lx0, x0)
            if dy >= 0.5 * (ly1 - ly0) and dx >= (lx1 - lx0) / 3:
                over.append(text)
        if not over:
            result.missed += 1
        elif cjk_share(" ".join(over)) < 0.3:
            result.as_latin += 1
            if len(result.examples) < 3:
                result.examples.append(f"{line.text[:24]!r} -> {' '.join(over)[:40]!r}")
    return result
