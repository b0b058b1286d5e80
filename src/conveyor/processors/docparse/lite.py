"""The ``lite`` engine: every page in a page process, results spooled to disk.

PDFium is not thread-safe, a worker may run several tasks at once in
threads, and a document is untrusted input, so pages are parsed in separate
processes (``pool.py``: spawned, capped in memory, one page at a time).
Results are taken in page order from a bounded window of pages and appended
to a JSON-lines spool, so memory stays flat however long the document.  A
page that fails, runs past the page timeout or kills its process is one
``failed_pages`` entry, never a failed document.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pypdfium2 as pdfium
from PIL import Image

from conveyor.errors import InputRejected, ProcessorError, TaskCancelled
from conveyor.processors.docparse.borderless import find_borderless
from conveyor.processors.docparse.captions import attach_captions
from conveyor.processors.docparse.inputs import DocInfo, PrepareJob, prepare
from conveyor.processors.docparse.layout import (
    Line,
    body_size,
    columns_lines,
    inside,
    join_words,
    lines_to_blocks,
    order_blocks,
    reading_order,
    shared_area,
    size_counts,
)
from conveyor.processors.docparse.limits import OCR_DPI, DocLimits, InputTooLarge
from conveyor.processors.docparse.lineno import line_numbers
from conveyor.processors.docparse.model import Block, PageResult
from conveyor.processors.docparse.ocr import (
    TURNED_BELOW_CONF,
    OcrUnavailable,
    Word,
    check_languages,
    finer_dpi,
    is_cjk_char,
    looks_turned,
    mean_confidence,
    reread_latin_lines,
    standing_share,
    tesseract_rotation,
    tesseract_words,
)
from conveyor.processors.docparse.pdfpage import (
    MIN_FIGURE_PT,
    PageContent,
    bitmap_rules,
    flatten_paper,
    read_page,
    render_gray,
    save_image,
    save_pil,
    save_region,
)
from conveyor.processors.docparse.pool import (
    DEAD,
    PENDING,
    JobKilled,
    JobTimedOut,
    PagePoolBroken,
    PageProcess,
    call,
    shared_pool,
    wait_any,
)
from conveyor.processors.docparse.ruled import ruled_tables
from conveyor.processors.docparse.scanfigures import find_figures
from conveyor.processors.docparse.tables import Grid, find_tables, to_html, to_markdown
from conveyor.processors.docparse.vectorfig import vector_figures

log = logging.getLogger(__name__)

# sizes from OCR word boxes are estimates (cap height / 0.72): ask a little more
OCR_HEADING_RATIO = 1.25
__all__ = ["OCR_DPI", "PagePoolBroken", "open_document", "run_pages"]


@dataclass(frozen=True)
class PageJob:
    path: str
    page_idx: int
    images_dir: str
    ocr: str  # auto | force | off
    langs: tuple[str, ...]
    limits: DocLimits = field(default_factory=DocLimits)
    # tesseract processes this page may run at once: more than one when cores would
    # otherwise stand idle (the last page of a document, a document of one page)
    ocr_parts: int = 1


# -- inside a page process --------------------------------------------------------------
_open: tuple[str, pdfium.PdfDocument] | None = None


def _document(path: str) -> pdfium.PdfDocument:
    """One open document per process, reused for every page it is given."""
    global _open
    if _open is None or _open[0] != path:
        if _open is not None:
            _open[1].close()
        _open = (path, pdfium.PdfDocument(path))
    return _open[1]


def parse_page(job: PageJob) -> dict[str, Any]:
    """Parse one page into its spool line (JSON, UTF-8) and a summary for the parent.

    A page that fails is reported in its result, not raised: the spool line is
    made here, inside the page's error handling, so nothing about one page
    (a character that will not encode, say) can fail the document."""
    pixels = [0]
    try:
        result = _parse_page(job, pixels)
        line = (json.dumps(result, ensure_ascii=False) + "\n").encode("utf-8")
    except OcrUnavailable:
        raise
    except InputTooLarge as exc:
        return failed_page(job.page_idx, str(exc))
    except Exception as exc:  # one bad page must not lose the other 499
        return failed_page(job.page_idx, f"{type(exc).__name__}: {exc}")
    return {
        "page_idx": job.page_idx,
        "kind": result["kind"],
        "method": result["method"],
        "pixels": pixels[0],
        "line": line,
    }


def failed_page(page_idx: int, error: str) -> dict[str, Any]:
    """The spool line and summary of a page that could not be parsed."""
    result = {**PageResult(page_idx, 0.0, 0.0, "error", "none").to_dict(), "error": error}
    line = (json.dumps(result, ensure_ascii=True) + "\n").encode("ascii")
    return {"page_idx": page_idx, "kind": "error", "method": "none", "error": error, "line": line}


def _parse_page(job: PageJob, pixels: list[int]) -> dict[str, Any]:
    pdf = _document(job.path)
    page = pdf[job.page_idx]
    try:
        content, images = read_page(page)
        kind = "scanned" if content.scanned else "text"
        use_ocr = job.ocr == "force" or (job.ocr == "auto" and content.scanned)
        width, height = content.shown.size
        result = PageResult(job.page_idx, width, height, kind, "ocr" if use_ocr else "text")
        if use_ocr:
            blocks, words = _ocr_blocks(page, content, job, pixels)
            result.ocr_words = words
        else:
            figures = [
                (obj, box)
                for obj, box in images
                if box[2] - box[0] >= MIN_FIGURE_PT and box[3] - box[1] >= MIN_FIGURE_PT
            ]
            blocks, sizes = _text_blocks(page, content, figures, Path(job.images_dir), job.limits)
            result.sizes = dict(sizes)
            for block in blocks:  # read where the text runs left to right, kept as shown
                block.bbox = content.to_shown(block.bbox)
            if content.scanned:
                result.method = "none"
        result.chars = content.printable
        result.blocks = [b.to_dict() for b in blocks]
        return result.to_dict()
    finally:
        page.close()


def _tables(grids: list[Grid]) -> list[Grid]:
    """A single box is a frame, not a table."""
    return [g for g in grids if g.shape[0] * g.shape[1] >= 2]


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """How much of ``a`` lies inside ``b``."""
    area = (a[2] - a[0]) * (a[3] - a[1])
    return shared_area(a, b) / area if area > 0 else 0.0


def _table_block(grid: Grid, cells: dict[tuple[int, int], str]) -> Block | None:
    """A pipe table in the Markdown, or the HTML where cells are merged (pipes cannot
    span; MinerU writes every table as HTML)."""
    rows_n, cols_n = grid.shape
    rows = [[cells.get((r, c), "") for c in range(cols_n)] for r in range(rows_n)]
    if sum(1 for row in rows for c in row if c) < 2:
        return None
    spans = grid.merged()
    return Block(
        type="table",
        bbox=grid.bbox,
        table_html=to_html(rows, spans),
        table_md="" if spans else to_markdown(rows),
    )


def _text_blocks(
    page: pdfium.PdfPage,
    content: PageContent,
    figures: list[Any],
    images_dir: Path,
    limits: DocLimits,
) -> tuple[list[Block], Counter[float]]:
    """The page's blocks in reading order, and its characters per text size (the
    document's body size, which decides its headings, is known only at the end)."""
    cap = limits.max_page_pixels
    numbers = line_numbers(content.chars)  # in the margin: not text, nor a table's column
    chars = [c for c in content.chars if id(c) not in numbers] if numbers else content.chars
    ruled, free = ruled_tables(chars, content.segments, content.width * content.height)
    anchored: list[Block] = []
    # vector figures: their labels are not the page's text, nor a table
    drawn = vector_figures(
        content.drawings,
        free,
        content.width,
        content.height,
        [t.grid.bbox for t in ruled] + [box for _, box in figures],
    )
    if drawn:
        free = [
            c
            for c in free
            if not any(inside((c.x0 + c.x1) / 2, (c.y0 + c.y1) / 2, box) for box in drawn)
        ]
        for box in drawn:
            rel = save_region(page, content.to_shown(box), images_dir, cap)
            if rel:
                anchored.append(Block(type="image", bbox=box, img_path=rel))
    for found in find_borderless(free):
        taken = {id(c) for c in found.chars}
        free = [c for c in free if id(c) not in taken]
        anchored.append(
            Block(
                type="table",
                bbox=found.bbox,
                table_html=to_html(found.cells),
                table_md=to_markdown(found.cells),
                img_path=save_region(page, content.to_shown(found.bbox), images_dir, cap) or "",
            )
        )
    lines = columns_lines(free, content.width)
    sizes = size_counts(lines)
    body = sizes.most_common(1)[0][0] if sizes else 0.0
    blocks = lines_to_blocks(reading_order(lines, content.width), body)
    for block in blocks:
        if block.type == "equation":  # its picture too, as the text cannot hold its layout
            block.img_path = save_region(page, content.to_shown(block.bbox), images_dir, cap) or ""
    for found_ruled in ruled:
        grid, cells = found_ruled.grid, found_ruled.cells
        table = _table_block(grid, cells)
        if table is not None:
            table.img_path = save_region(page, content.to_shown(table.bbox), images_dir, cap) or ""
            anchored.append(table)
    for obj, box in figures:
        if any(inside((box[0] + box[2]) / 2, (box[1] + box[3]) / 2, t.bbox) for t in anchored):
            continue
        # an image too big to decode whole is rendered from the page, at a capped size
        rel = save_image(obj, images_dir, content.frame.rotation, cap) or save_region(
            page, content.to_shown(box), images_dir, cap
        )
        if rel:
            anchored.append(Block(type="image", bbox=box, img_path=rel))
    return attach_captions(order_blocks(blocks, anchored, content.width)), sizes


def _ocr_blocks(
    page: pdfium.PdfPage, content: PageContent, job: PageJob, pixels: list[int]
) -> tuple[list[Block], int]:
    check_languages(job.langs)  # a missing language fails the task, not just this page
    # 200 dpi, or less for a big page; a page too big even at the lowest is refused
    dpi = job.limits.render_dpi(*content.shown.size)
    gray = render_gray(page, dpi)
    pixels[0] += gray.size
    # small print is read at a finer resolution, within the same pixel cap
    finer = min(
        finer_dpi(flatten_paper(gray), dpi),
        job.limits.render_dpi(*content.shown.size, want=2 * dpi),
    )
    if finer > dpi:
        dpi, gray = finer, render_gray(page, finer)
        pixels[0] += gray.size
    flat = Image.fromarray(flatten_paper(gray))
    words = reread_latin_lines(
        flat, tesseract_words(flat, job.langs, dpi, job.ocr_parts), job.langs, dpi
    )
    turn = 0
    if looks_turned(words):  # is the page lying on its side?
        turn = tesseract_rotation(flat, dpi)
        if turn:
            upright = np.ascontiguousarray(np.rot90(gray, k=-turn // 90))
            again = tesseract_words(
                Image.fromarray(flatten_paper(upright)), job.langs, dpi, job.ocr_parts
            )
            # keep it if it reads as upright text at least as surely as the page needs
            bar = min(mean_confidence(words), TURNED_BELOW_CONF)
            if standing_share(again) <= 0.5 and mean_confidence(again) >= bar:
                gray, words = upright, again
            else:
                turn = 0
    shown = content.shown
    frame = shown.turned(shown.rotation + turn)  # the bitmap's frame, in points
    scale = dpi / 72.0
    figures = find_figures(gray, scale, words)
    ruled = gray
    if figures:  # a picture's long dark runs are not a table's rules
        ruled = gray.copy()
        for x0, y0, x1, y1 in figures:
            ruled[int(y0 * scale) : int(y1 * scale), int(x0 * scale) : int(x1 * scale)] = 255
    grids = _tables(find_tables(bitmap_rules(ruled, scale)))
    figures = [f for f in figures if not any(_overlap(f, g.bbox) > 0.5 for g in grids)]
    # what OCR read inside a picture is its labels or noise, not the page's text
    words = [
        w
        for w in words
        if not any(inside((w.x0 + w.x1) / 2, (w.y0 + w.y1) / 2, f) for f in figures)
    ]
    free: list[Word] = []
    in_cells: dict[tuple[int, int, int], list[Word]] = {}
    for w in words:
        cx, cy = (w.x0 + w.x1) / 2, (w.y0 + w.y1) / 2
        for gi, grid in enumerate(grids):
            cell = grid.cell_of(cx, cy)
            if cell is not None:
                in_cells.setdefault((gi, *cell), []).append(w)
                break
        else:
            free.append(w)
    lines = _ocr_lines(free)
    body = body_size(lines)
    blocks = lines_to_blocks(lines, body, heading_ratio=OCR_HEADING_RATIO, bold_headings=False)
    anchored: list[Block] = []
    for gi, grid in enumerate(grids):
        cells: dict[tuple[int, int], str] = {}
        for (g, r, c), ws in in_cells.items():
            if g == gi:
                text = ""
                for w in sorted(ws, key=lambda w: (w.block, w.par, w.line, w.x0)):
                    text = join_words(text, w.text)
                cells[(r, c)] = text
        table = _table_block(grid, cells)
        if table is not None:
            x0, y0, x1, y1 = (int(v * scale) for v in table.bbox)
            crop = Image.fromarray(gray[max(0, y0 - 4) : y1 + 4, max(0, x0 - 4) : x1 + 4])
            table.img_path = save_pil(crop, Path(job.images_dir))
            anchored.append(table)
    for box in figures:
        rel = save_region(
            page, frame.to(shown, box), Path(job.images_dir), job.limits.max_page_pixels
        )
        if rel:
            anchored.append(Block(type="image", bbox=box, img_path=rel))
    ordered = attach_captions(order_blocks(blocks, anchored, frame.size[0]))
    for block in ordered:
        block.bbox = frame.to(shown, block.bbox)
    return ordered, len(words)


_ASCENDS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789bdfhiklt")
_DESCENDS = set("gjpqyQ(),;[]{}|/@$")
CAP_HEIGHT = 0.72  # of the font size, for the Latin faces documents mostly use
CJK_HEIGHT = 0.9  # an ideograph's ink, of the font size


def _cap_height_word(text: str) -> bool:
    """A word whose box spans exactly the cap height: ascenders, no descenders."""
    core = text.strip(".:!?'\"")
    return (
        bool(core)
        and core.isascii()
        and any(c in _ASCENDS for c in core)
        and not any(c in _DESCENDS for c in core)
    )


def _ocr_lines(words: list[Word]) -> list[Line]:
    """Tesseract's own lines, in its reading order; a paragraph never spans two of its blocks."""
    grouped: dict[tuple[int, int, int], list[Word]] = {}
    for w in words:
        grouped.setdefault((w.block, w.par, w.line), []).append(w)
    par_lines: dict[tuple[int, int], int] = {}
    for block, par, _ in grouped:
        par_lines[(block, par)] = par_lines.get((block, par), 0) + 1
    lines: list[Line] = []
    for (block, par, _), ws in grouped.items():
        text = ""
        for w in ws:
            text = join_words(text, w.text)
        # the size from the words whose box height says it: ideographs fill about
        # 0.9 em; Latin words spanning exactly the cap height, 0.72 em (a logo's
        # raised or lowered letter, TeX's E, makes a Latin box taller)
        ideographs = sorted(
            (w.y1 - w.y0) / CJK_HEIGHT for w in ws if w.text and all(is_cjk_char(c) for c in w.text)
        )
        caps = sorted((w.y1 - w.y0) / CAP_HEIGHT for w in ws if _cap_height_word(w.text))
        heights = ideographs or caps or sorted(w.y1 - w.y0 for w in ws)
        lines.append(
            Line(
                text=text,
                x0=min(w.x0 for w in ws),
                y0=min(w.y0 for w in ws),
                x1=max(w.x1 for w in ws),
                y1=max(w.y1 for w in ws),
                size=heights[len(heights) // 2],
                bold=False,
                column=block * 1000 + par,
                chars=len(text),
                solo=par_lines[(block, par)] == 1,
            )
        )
    return _paragraph_sizes(lines)


def _paragraph_sizes(lines: list[Line]) -> list[Line]:
    """A line of a paragraph is set in the paragraph's size: a short last line's word
    boxes (one word, a logo with a raised letter) made it look bigger, and a heading.
    The first line keeps its own when it is a heading's size above the rest."""
    by_par: dict[int, list[Line]] = {}
    for ln in lines:
        by_par.setdefault(ln.column, []).append(ln)
    for par in by_par.values():
        if len(par) < 2:
            continue
        rest = sorted(ln.size for ln in par[1:])
        size = rest[(len(rest) - 1) // 2]  # the lower median: a noisy box is taller
        for k, ln in enumerate(par):
            if k > 0 or ln.size < OCR_HEADING_RATIO * size:
                ln.size = size
    return lines


# -- in the worker ------------------------------------------------------------------------
PAGE_WINDOW_PER_PROCESS = 2
MAX_OCR_PARTS = 4
# a page whose process dies is tried once more in a fresh one (a kill from outside,
# say); dying twice, it fails: it needs more than the page processes are allowed
PAGE_TRIES = 2


@dataclass
class LiteSummary:
    pages: int = 0
    text_pages: int = 0
    scanned_pages: int = 0
    ocr_pages: int = 0
    failed_pages: int = 0
    failed: list[int] = field(default_factory=list)  # 1-based numbers of the failed pages
    timed_out: int = 0  # of the failed pages, those that ran past the page timeout
    first_error: str = ""  # the first failed page's reason
    pixels: int = 0  # rendered for OCR


def open_document(
    src: Path,
    workdir: Path,
    pages: str | None,
    *,
    limits: DocLimits,
    workers: int,
    cancel: threading.Event,
    scan_check: bool = False,
) -> tuple[DocInfo, list[int]]:
    """Know the input (kind, pages, the pages selected) from a page process: an image is
    decoded and a PDF opened there, under the memory limit, never in the worker."""
    pool = shared_pool(workers, limits.page_memory_mb)
    job = PrepareJob(str(src), str(workdir), pages, limits, scan_check)
    try:
        found = call(pool, prepare, job, cancel=cancel, timeout_s=limits.page_timeout_s)
    except JobKilled as exc:
        raise InputRejected(
            "the input could not be opened within the page processes' memory limit "
            f"({limits.page_memory_mb} MiB, CONVEYOR_DOCPARSE_PAGE_MEMORY_MB)"
        ) from exc
    except JobTimedOut as exc:
        raise ProcessorError(
            f"opening the input took too long: {exc}", retryable=True, code="timeout"
        ) from exc
    doc = DocInfo(Path(found["path"]), found["kind"], found["page_count"], found["has_scans"])
    return doc, list(found["pages"])


def run_pages(
    path: Path,
    pages: list[int],
    *,
    images_dir: Path,
    spool: Path,
    ocr: str,
    langs: tuple[str, ...],
    workers: int,
    cancel: threading.Event,
    on_page: Callable[[int, int, dict[str, Any]], None],
    limits: DocLimits | None = None,
) -> LiteSummary:
    """Parse ``pages`` of ``path`` in page processes; each result goes to ``spool``, in
    page order.

    A page starts only within ``PAGE_WINDOW_PER_PROCESS`` pages per process of
    the first page not yet written, so finished-but-unwritten results do not
    grow with the document.  Nothing here waits without a bound: a page past
    ``limits.page_timeout_s`` is killed and failed, a process that dies is
    replaced.
    """
    limits = limits or DocLimits()
    summary = LiteSummary()
    pool = shared_pool(workers, limits.page_memory_mb)
    window = pool.workers * PAGE_WINDOW_PER_PROCESS
    todo: deque[int] = deque(range(len(pages)))  # positions in ``pages``
    deaths: dict[int, int] = {}
    running: dict[PageProcess, int] = {}  # the page position each process is on
    finished: dict[int, dict[str, Any]] = {}
    written = 0
    pool.acquire()
    try:
        with spool.open("wb") as out:
            while written < len(pages):
                if cancel.is_set():  # pages already finished must not be taken either
                    raise TaskCancelled("cancelled")
                while todo and todo[0] - written < window and len(running) < pool.workers:
                    proc = pool.checkout(timeout=0.0 if running else 0.5)
                    if proc is None:
                        break
                    pos = todo.popleft()
                    # the last page to start may use the cores no page will need (a
                    # document of one scanned page would leave all but one idle)
                    parts = 1 if todo else min(MAX_OCR_PARTS, 1 + pool.spare())
                    job = PageJob(str(path), pages[pos], str(images_dir), ocr, langs, limits, parts)
                    try:
                        proc.send(parse_page, job)
                    except (OSError, ValueError):  # it died while idle
                        pool.checkin(proc, healthy=False)
                        todo.appendleft(pos)
                        continue
                    running[proc] = pos
                wait_any(list(running), 0.5 if running else 0.0, limits.page_timeout_s)
                for proc in list(running):
                    pos = running[proc]
                    msg = proc.take()
                    if msg is PENDING and not proc.overdue(limits.page_timeout_s):
                        continue
                    del running[proc]
                    idx = pages[pos]
                    if msg is PENDING:
                        pool.checkin(proc, healthy=False)
                        summary.timed_out += 1
                        finished[pos] = failed_page(
                            idx, f"parsing the page took longer than {limits.page_timeout_s:g} s"
                        )
                    elif msg is DEAD:
                        pool.checkin(proc, healthy=False)
                        if not proc.ready:
                            raise PagePoolBroken("a page process died before it was ready")
                        deaths[pos] = deaths.get(pos, 0) + 1
                        if deaths[pos] < PAGE_TRIES:
                            todo.appendleft(pos)
                        else:
                            finished[pos] = failed_page(
                                idx,
                                "the page process died on this page twice: it needs more "
                                f"than the {limits.page_memory_mb} MiB a page process may use "
                                "(CONVEYOR_DOCPARSE_PAGE_MEMORY_MB), or crashes the PDF library",
                            )
                    else:
                        pool.checkin(proc)
                        status, value = msg
                        if status == "error":
                            if isinstance(value, OcrUnavailable):
                                raise value
                            value = failed_page(idx, f"{type(value).__name__}: {value}")
                        finished[pos] = value
                while written in finished:
                    result = finished.pop(written)
                    out.write(result["line"])
                    written += 1
                    _count(summary, result)
                    limits.check_document(summary.pixels, "pages rendered for OCR")
                    on_page(written, len(pages), {k: v for k, v in result.items() if k != "line"})
    except InputTooLarge as exc:
        raise InputRejected(str(exc)) from exc
    finally:
        for proc in running:  # cancelled, or failed: what is still running is killed
            pool.checkin(proc, healthy=False)
        pool.release()
    return summary


def _count(summary: LiteSummary, result: dict[str, Any]) -> None:
    summary.pages += 1
    summary.pixels += int(result.get("pixels") or 0)
    if result.get("error"):
        summary.failed_pages += 1
        summary.failed.append(int(result["page_idx"]) + 1)
        if not summary.first_error:
            summary.first_error = f"page {int(result['page_idx']) + 1}: {result['error']}"
    elif result["kind"] == "scanned":
        summary.scanned_pages += 1
    else:
        summary.text_pages += 1
    if result.get("method") == "ocr":
        summary.ocr_pages += 1
