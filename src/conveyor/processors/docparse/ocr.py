"""OCR of a rendered page: tesseract from the distribution, one thread per page.

Pages already run in parallel, one per core, so tesseract's own OpenMP
threads would only fight them: ``OMP_THREAD_LIMIT=1`` (tesseract's advice
for running several at once).  The image goes in on stdin and the TSV comes
back on stdout, so no temp files are left behind by a killed page.
"""

from __future__ import annotations

import functools
import io
import itertools
import os
import shutil
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

TESSERACT = os.environ.get("CONVEYOR_TESSERACT", "tesseract")
OCR_TIMEOUT_S = 300.0


class OcrUnavailable(RuntimeError):
    """This host cannot OCR in the languages asked for."""


@dataclass
class Word:
    text: str
    x0: float
    y0: float
    x1: float
    y1: float
    conf: float
    block: int
    par: int
    line: int


@functools.cache
def tesseract_languages() -> tuple[str, ...]:
    """The traineddata this host has, or () without tesseract."""
    if shutil.which(TESSERACT) is None:
        return ()
    try:
        out = subprocess.run(
            [TESSERACT, "--list-langs"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(
        ln.strip() for ln in out.splitlines()[1:] if ln.strip() and not ln.startswith("List")
    )


def check_languages(langs: Sequence[str]) -> None:
    have = tesseract_languages()
    if not have:
        raise OcrUnavailable("tesseract is not installed on this worker")
    missing = [lang for lang in langs if lang not in have]
    if missing:
        raise OcrUnavailable(
            f"tesseract on this worker has no {', '.join(missing)} language data "
            f"(it has {', '.join(have)})"
        )


def parse_tsv(tsv: str, scale: float) -> list[Word]:
    """Tesseract's TSV (level 5 rows are words) to words in points."""
    words: list[Word] = []
    for row in tsv.splitlines()[1:]:
        cols = row.split("\t")
        if len(cols) < 12 or cols[0] != "5":
            continue
        text = cols[11].strip()
        if not text:
            continue
        left, top, width, height = (int(c) for c in cols[6:10])
        words.append(
            Word(
                text=text,
                x0=left / scale,
                y0=top / scale,
                x1=(left + width) / scale,
                y1=(top + height) / scale,
                conf=float(cols[10]),
                block=int(cols[2]),
                par=int(cols[3]),
                line=int(cols[4]),
            )
        )
    return words


def _tesseract(image: Image.Image, dpi: int, *args: str) -> subprocess.CompletedProcess[bytes]:
    """One tesseract run on ``image`` (PNG on stdin, result on stdout), one thread."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
    argv = [TESSERACT, "stdin", "stdout", "--dpi", str(dpi), *args]
    return subprocess.run(
        argv, input=buf.getvalue(), capture_output=True, timeout=OCR_TIMEOUT_S, env=env
    )


def tesseract_words(
    image: Image.Image, langs: Sequence[str], dpi: int, parts: int = 1
) -> list[Word]:
    """OCR one page image rendered at ``dpi``; word boxes come back in points.

    With ``parts`` > 1 (cores no other page needs: a document of one scanned
    page) the page is read by that many tesseract processes at once, each on the
    page with only its share of the text left on it (:func:`split_page`), and
    their words are put together in reading order."""
    groups = split_page(np.asarray(image), parts, dpi) if parts > 1 else []
    if len(groups) < 2:
        return _read_words(image, langs, dpi)
    page = np.asarray(image)
    canvases = []
    for boxes in groups:
        canvas = np.full_like(page, 255)
        for y0, y1, x0, x1 in boxes:
            canvas[y0:y1, x0:x1] = page[y0:y1, x0:x1]
        canvases.append(Image.fromarray(canvas))
    with ThreadPoolExecutor(len(canvases)) as pool:  # each waits on its own process
        found = list(pool.map(lambda im: _read_words(im, langs, dpi), canvases))
    words: list[Word] = []
    for k, part in enumerate(found):
        for w in part:  # tesseract numbers blocks per run: keep each run's apart
            w.block += k * PART_BLOCKS
        words.extend(part)
    return words


def _read_words(image: Image.Image, langs: Sequence[str], dpi: int) -> list[Word]:
    try:
        proc = _tesseract(image, dpi, "-l", "+".join(langs), "--psm", "3", "tsv")
    except FileNotFoundError as exc:
        raise OcrUnavailable("tesseract is not installed on this worker") from exc
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"tesseract failed ({proc.returncode}): {' '.join(tail)}")
    return parse_tsv(proc.stdout.decode("utf-8", errors="replace"), dpi / 72.0)


# -- small print --------------------------------------------------------------------------
# Tesseract reads type whose lines are under about 18 px poorly: a statistical
# table's 6.5 pt figures at 200 dpi lose their decimal points ("467.9" -> "4679")
# and the scan-census page kept 0.77 of its words; rendered at 300 dpi it keeps 0.97
# (the pixels of a 200 dpi scan, resampled: tesseract's binarisation and segmentation
# see the points and gaps).  Body text of 9-11 pt is 23-26 px at 200 dpi.
SMALL_LINE_PX = 18
WANT_LINE_PX = 22
MAX_UPSCALE = 2.0


def line_px(page: np.ndarray, strips: int = 6) -> float | None:
    """The page's usual height of a line of text in pixels: the median run of inked
    rows in each of ``strips`` vertical strips (so columns do not run together);
    None on a page with too few lines to tell (a photograph, a blank page)."""
    ink = page < INK_BELOW
    width = ink.shape[1]
    heights: list[int] = []
    for k in range(strips):
        rows = ink[:, k * width // strips : (k + 1) * width // strips].any(axis=1)
        edges = np.flatnonzero(np.diff(np.concatenate(([0], rows.astype(np.int8), [0]))))
        heights.extend(int(b - a) for a, b in zip(edges[::2], edges[1::2], strict=True))
    lines = [h for h in heights if h >= 6]  # specks and rules are not lines
    return float(np.median(lines)) if len(lines) >= 20 else None


def finer_dpi(page: np.ndarray, dpi: int) -> int:
    """The resolution to read a page of small print at (``dpi`` for usual print)."""
    height = line_px(page)
    if height is None or height >= SMALL_LINE_PX:
        return dpi
    return int(dpi * min(MAX_UPSCALE, WANT_LINE_PX / max(height, 1.0)))


# -- one page read by several tesseract processes ---------------------------------------
# The page is cut, the classic X-Y way, along white bands: a column gutter wholly
# clear top to bottom first (columns read one after the other), else bands across
# the whole width (top to bottom); the regions so found are in reading order, and
# are dealt out in runs of about equal ink.  Each process reads the page with only
# its regions on it, so tesseract's own layout analysis sees each region whole and
# every box stays where it is on the page.
PART_BLOCKS = 10_000
INK_BELOW = 160  # a darker pixel is ink
GUTTER_IN = 0.12  # a column gutter at least this wide (inches; LaTeX's is 0.25-0.35)
BAND_IN = 0.06  # a band across the page at least this tall: between paragraphs, not lines
MIN_SHARE = 0.25  # a run of regions with less of the ink than this is not worth a process
MAX_DEPTH = 8
Box = tuple[int, int, int, int]


def split_page(page: np.ndarray, parts: int, dpi: int = 200) -> list[list[Box]]:
    """The page's regions dealt into ``parts`` runs of about equal ink, in reading
    order; a run is a list of ``(y0, y1, x0, x1)`` pixel boxes.  Fewer than two runs
    (a page with no white band to cut along, or one region holding most of the ink)
    means: read it whole."""
    ink = page < INK_BELOW
    leaves: list[Box] = []
    _xy_cut(ink, (0, ink.shape[0], 0, ink.shape[1]), dpi, 0, leaves)
    weights = [int(ink[y0:y1, x0:x1].sum()) for y0, y1, x0, x1 in leaves]
    total = sum(weights)
    if len(leaves) < 2 or total == 0:
        return []
    runs: list[list[Box]] = [[]]
    inked = [0]
    done = 0
    for box, weight in zip(leaves, weights, strict=True):
        # a new run starts when this region's middle is past the run's share of the ink
        if runs[-1] and done + weight / 2 > total * len(runs) / parts and len(runs) < parts:
            runs.append([])
            inked.append(0)
        runs[-1].append(box)
        inked[-1] += weight
        done += weight
    if len(runs) < 2 or min(inked) < total * MIN_SHARE * 2 / parts:
        return []
    return runs


def _blank_runs(profile: np.ndarray, min_len: int) -> list[tuple[int, int]]:
    """Inner stretches (not the margins) at least ``min_len`` long with no ink."""
    blank = profile == 0
    out: list[tuple[int, int]] = []
    start = None
    inked = np.flatnonzero(~blank)
    if inked.size == 0:
        return out
    first, last = int(inked[0]), int(inked[-1])
    for i in range(first, last + 1):
        if blank[i]:
            if start is None:
                start = i
        elif start is not None:
            if i - start >= min_len:
                out.append((start, i))
            start = None
    return out


def _trim(ink: np.ndarray, box: Box) -> Box | None:
    y0, y1, x0, x1 = box
    sub = ink[y0:y1, x0:x1]
    rows = np.flatnonzero(sub.any(axis=1))
    cols = np.flatnonzero(sub.any(axis=0))
    if rows.size == 0:
        return None
    return (y0 + int(rows[0]), y0 + int(rows[-1]) + 1, x0 + int(cols[0]), x0 + int(cols[-1]) + 1)


def _gutters(ink: np.ndarray, box: Box, dpi: int) -> list[tuple[int, int]]:
    y0, y1, x0, x1 = box
    return _blank_runs(ink[y0:y1, x0:x1].sum(axis=0), int(GUTTER_IN * dpi))


def _xy_cut(ink: np.ndarray, box: Box, dpi: int, depth: int, out: list[Box]) -> None:
    """Append the leaf regions of ``box`` in reading order."""
    trimmed = _trim(ink, box)
    if trimmed is None:
        return
    y0, y1, x0, x1 = trimmed
    if depth >= MAX_DEPTH:
        out.append(trimmed)
        return
    gutters = _gutters(ink, trimmed, dpi)
    if gutters:  # columns clear top to bottom: one after the other
        edges = [x0, *(x0 + (a + b) // 2 for a, b in gutters), x1]
        for a, b in itertools.pairwise(edges):
            _xy_cut(ink, (y0, y1, a, b), dpi, depth + 1, out)
        return
    bands = _blank_runs(ink[y0:y1, x0:x1].sum(axis=1), int(BAND_IN * dpi))
    if not bands:
        out.append(trimmed)
        return
    edges = [y0, *(y0 + (a + b) // 2 for a, b in bands), y1]
    pieces: list[Box] = [(a, b, x0, x1) for a, b in itertools.pairwise(edges)]
    # two bands one above the other with a gutter at the same place are one stretch
    # of columns that happen to have paragraph breaks at the same height: cut
    # across there, the left column's bottom would be read after the right's top
    merged: list[Box] = []
    for piece in pieces:
        if merged and _shared_gutter(ink, merged[-1], piece, dpi):
            top = merged.pop()
            piece = (top[0], piece[1], x0, x1)
        merged.append(piece)
    if len(merged) == 1:
        out.append(trimmed)  # a stretch of columns with a figure across: read whole
        return
    for piece in merged:
        _xy_cut(ink, piece, dpi, depth + 1, out)


def _shared_gutter(ink: np.ndarray, a: Box, b: Box, dpi: int) -> bool:
    ga, gb = _box_gutters(ink, a, dpi), _box_gutters(ink, b, dpi)
    return any(min(p[1], q[1]) > max(p[0], q[0]) for p in ga for q in gb)


def _box_gutters(ink: np.ndarray, box: Box, dpi: int) -> list[tuple[int, int]]:
    """A region's gutters, in page x."""
    trimmed = _trim(ink, box)
    if trimmed is None:
        return []
    return [(trimmed[2] + a, trimmed[2] + b) for a, b in _gutters(ink, trimmed, dpi)]


# below this mean confidence (per character) a page may be lying on its side
TURNED_BELOW_CONF = 70.0
# tesseract's own advice: trust an orientation guess above about 2
MIN_ORIENTATION_CONF = 2.0


def looks_turned(words: Sequence[Word]) -> bool:
    """Read poorly, or read well but with words taller than wide: tesseract reads a
    page turned a quarter clockwise fluently, word boxes standing on end."""
    return mean_confidence(words) < TURNED_BELOW_CONF or standing_share(words) > 0.5


def standing_share(words: Sequence[Word]) -> float:
    """Of the words of four letters or more, the share whose box is taller than wide."""
    long = [w for w in words if len(w.text) >= 4]
    if not long:
        return 0.0
    return sum(1 for w in long if (w.y1 - w.y0) > (w.x1 - w.x0)) / len(long)


def mean_confidence(words: Sequence[Word]) -> float:
    """Tesseract's confidence per character read: a word counts as many times as it
    has characters.  (Words of three letters or more alone left a Chinese page,
    whose words are mostly one or two ideographs read at 88-93, judged by its
    Latin words, at 62-76: under the bar, and asked for its orientation, 1.5 s of
    a core, on every such page.)  Upright pages read at 81-96 this way, pages
    lying on their side or upside down at 21-29."""
    total = weight = 0.0
    for w in words:
        if w.conf >= 0 and w.text:
            total += w.conf * len(w.text)
            weight += len(w.text)
    return total / weight if weight else 0.0


def tesseract_rotation(image: Image.Image, dpi: int) -> int:
    """The clockwise quarter turn that stands a page upright, by tesseract's
    orientation detection; 0 when upright, unsure or unavailable."""
    try:
        proc = _tesseract(image, dpi, "--psm", "0")
    except (OSError, subprocess.SubprocessError):
        return 0
    if proc.returncode != 0:  # no osd data, or too little text to tell
        return 0
    found: dict[str, str] = {}
    for line in proc.stdout.decode(errors="replace").splitlines():
        key, _, value = line.partition(":")
        found[key.strip()] = value.strip()
    try:
        rotate = int(found["Rotate"]) % 360
        confidence = float(found["Orientation confidence"])
    except (KeyError, ValueError):
        return 0
    return rotate if rotate in (90, 180, 270) and confidence >= MIN_ORIENTATION_CONF else 0


# -- a line of Chinese read as Latin ----------------------------------------------------
# Tesseract with eng+chi_sim reads a line in the script its first guess says; a bold
# or decorated Chinese line can be taken for Latin and come out as capitals ("FBR MAC
# FAR SB").  On a page that is mostly CJK, a line read as Latin only and not surely is
# read again with the CJK languages alone; the reading with CJK in it is kept when
# tesseract is at least as sure of it.
CJK_LANGS = ("chi_sim", "chi_tra", "jpn", "kor", "chi_sim_vert", "chi_tra_vert", "jpn_vert")
CJK_PAGE_SHARE = 0.3  # of a page's characters: a CJK page
SURE_LATIN_CONF = 85.0  # a Latin line read at least this surely stays as it is
LINE_PAD_PX = 6
STACK_GAP_PX = 24


def is_cjk_char(c: str) -> bool:
    o = ord(c)
    return (
        0x4E00 <= o <= 0x9FFF
        or 0x3400 <= o <= 0x4DBF
        or 0x3040 <= o <= 0x30FF
        or (0xAC00 <= o <= 0xD7AF)
    )


def _cjk_share(text: str) -> float:
    chars = [c for c in text if not c.isspace()]
    return sum(1 for c in chars if is_cjk_char(c)) / len(chars) if chars else 0.0


def _line_key(w: Word) -> tuple[int, int, int]:
    return (w.block, w.par, w.line)


def reread_latin_lines(
    image: Image.Image, words: list[Word], langs: Sequence[str], dpi: int
) -> list[Word]:
    """``words`` with the Latin-only lines of a CJK page read again in its CJK languages
    (one more tesseract run for all of them: the lines are stacked in one image)."""
    cjk = [lang for lang in langs if lang in CJK_LANGS]
    if not cjk or not words:
        return words
    if _cjk_share("".join(w.text for w in words)) < CJK_PAGE_SHARE:
        return words
    lines: dict[tuple[int, int, int], list[Word]] = {}
    for w in words:
        lines.setdefault(_line_key(w), []).append(w)
    suspects = []
    for key, ws in lines.items():
        text = "".join(w.text for w in ws)
        confs = [w.conf for w in ws if w.conf >= 0]
        unsure = not confs or sum(confs) / len(confs) < SURE_LATIN_CONF
        if _cjk_share(text) == 0 and any(c.isalpha() for c in text) and unsure:
            suspects.append(key)
    if not suspects:
        return words
    scale = dpi / 72.0
    crops = []
    for key in suspects:
        ws = lines[key]
        x0 = max(0, int(min(w.x0 for w in ws) * scale) - LINE_PAD_PX)
        y0 = max(0, int(min(w.y0 for w in ws) * scale) - LINE_PAD_PX)
        x1 = min(image.width, int(max(w.x1 for w in ws) * scale) + LINE_PAD_PX)
        y1 = min(image.height, int(max(w.y1 for w in ws) * scale) + LINE_PAD_PX)
        crops.append((key, (x0, y0, x1, y1), image.crop((x0, y0, x1, y1))))
    width = max(c.width for _, _, c in crops) + 2 * LINE_PAD_PX
    height = sum(c.height + STACK_GAP_PX for _, _, c in crops) + STACK_GAP_PX
    stack = Image.new(image.mode, (width, height), 255 if image.mode == "L" else "white")
    offsets = []
    y = STACK_GAP_PX
    for _key, _box, crop in crops:
        stack.paste(crop, (LINE_PAD_PX, y))
        offsets.append(y)
        y += crop.height + STACK_GAP_PX
    try:
        proc = _tesseract(stack, dpi, "-l", "+".join(cjk), "--psm", "6", "tsv")
    except (OSError, subprocess.SubprocessError):
        return words
    if proc.returncode != 0:
        return words
    again = parse_tsv(proc.stdout.decode("utf-8", errors="replace"), 1.0)  # pixels
    replaced: dict[tuple[int, int, int], list[Word]] = {}
    for (key, box, crop), top in zip(crops, offsets, strict=True):
        mine = [w for w in again if top <= (w.y0 + w.y1) / 2 <= top + crop.height]
        text = "".join(w.text for w in mine)
        confs = [w.conf for w in mine if w.conf >= 0]
        old = [w.conf for w in lines[key] if w.conf >= 0]
        if not mine or _cjk_share(text) < 0.5:
            continue
        if confs and old and sum(confs) / len(confs) < sum(old) / len(old):
            continue
        dx, dy = box[0] - LINE_PAD_PX, box[1] - top
        block, par, line = key
        replaced[key] = [
            Word(
                w.text,
                (w.x0 + dx) / scale,
                (w.y0 + dy) / scale,
                (w.x1 + dx) / scale,
                (w.y1 + dy) / scale,
                w.conf,
                block,
                par,
                line,
            )
            for w in mine
        ]
    if not replaced:
        return words
    out: list[Word] = []
    done: set[tuple[int, int, int]] = set()
    for w in words:
        key = _line_key(w)
        if key in replaced:
            if key not in done:
                out.extend(replaced[key])
                done.add(key)
            continue
        out.append(w)
    return out
