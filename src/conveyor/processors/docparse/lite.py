"""The ``lite`` engine: every page in a pool of processes, results spooled to disk.

PDFium is not thread-safe and a worker may run several tasks at once in
threads, so pages are parsed in separate processes (``spawn``: a fork of a
threaded worker could inherit a held lock).  Results are taken in page
order from a bounded window of submitted pages and appended to a
JSON-lines spool, and the pool's processes are replaced every
``PAGES_PER_CHILD`` pages, so memory stays flat however long the document.
"""

from __future__ import annotations

import atexit
import json
import logging
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pypdfium2 as pdfium
from PIL import Image

from conveyor.errors import TaskCancelled
from conveyor.processors.docparse.borderless import find_borderless
from conveyor.processors.docparse.captions import attach_captions
from conveyor.processors.docparse.layout import (
    Char,
    Line,
    body_size,
    chars_to_lines,
    inside,
    join_words,
    lines_to_blocks,
    order_blocks,
    reading_order,
    shared_area,
)
from conveyor.processors.docparse.model import Block, PageResult
from conveyor.processors.docparse.ocr import (
    TURNED_BELOW_CONF,
    OcrUnavailable,
    Word,
    check_languages,
    looks_turned,
    mean_confidence,
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
from conveyor.processors.docparse.scanfigures import find_figures
from conveyor.processors.docparse.tables import Grid, find_tables, to_html, to_markdown

log = logging.getLogger(__name__)

PAGES_PER_CHILD = 100
OCR_DPI = 200
# sizes from OCR word boxes are estimates (cap height / 0.72): ask a little more
OCR_HEADING_RATIO = 1.25


@dataclass(frozen=True)
class PageJob:
    path: str
    page_idx: int
    images_dir: str
    ocr: str  # auto | force | off
    langs: tuple[str, ...]
    dpi: int = OCR_DPI


# -- inside a pool process -------------------------------------------------------------
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
    """Parse one page; a page that fails is reported in its result, not raised."""
    try:
        return _parse_page(job)
    except OcrUnavailable:
        raise
    except Exception as exc:  # one bad page must not lose the other 499
        return {
            **PageResult(job.page_idx, 0.0, 0.0, "error", "none").to_dict(),
            "error": f"{type(exc).__name__}: {exc}",
        }


def _parse_page(job: PageJob) -> dict[str, Any]:
    pdf = _document(job.path)
    page = pdf[job.page_idx]
    try:
        content, images = read_page(page)
        kind = "scanned" if content.scanned else "text"
        use_ocr = job.ocr == "force" or (job.ocr == "auto" and content.scanned)
        width, height = content.shown.size
        result = PageResult(job.page_idx, width, height, kind, "ocr" if use_ocr else "text")
        if use_ocr:
            blocks, words = _ocr_blocks(page, content, job)
            result.ocr_words = words
        else:
            figures = [
                (obj, box)
                for obj, box in images
                if box[2] - box[0] >= MIN_FIGURE_PT and box[3] - box[1] >= MIN_FIGURE_PT
            ]
            blocks = _text_blocks(page, content, figures, Path(job.images_dir))
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
    page: pdfium.PdfPage, content: PageContent, figures: list[Any], images_dir: Path
) -> list[Block]:
    grids = _tables(find_tables(content.segments))
    free: list[Char] = []
    in_cells: dict[tuple[int, int, int], list[Char]] = {}
    for ch in content.chars:
        cx, cy = (ch.x0 + ch.x1) / 2, (ch.y0 + ch.y1) / 2
        placed = False
        if ch.x1 > ch.x0:
            for gi, grid in enumerate(grids):
                cell = grid.cell_of(cx, cy)
                if cell is not None:
                    in_cells.setdefault((gi, *cell), []).append(ch)
                    placed = True
                    break
        if not placed:
            free.append(ch)
    anchored: list[Block] = []
    for found in find_borderless(free):
        taken = {id(c) for c in found.chars}
        free = [c for c in free if id(c) not in taken]
        anchored.append(
            Block(
                type="table",
                bbox=found.bbox,
                table_html=to_html(found.cells),
                table_md=to_markdown(found.cells),
                img_path=save_region(page, content.to_shown(found.bbox), images_dir) or "",
            )
        )
    lines = chars_to_lines(free)
    body = body_size(lines)
    blocks = lines_to_blocks(reading_order(lines, content.width), body)
    for block in blocks:
        if block.type == "equation":  # its picture too, as the text cannot hold its layout
            block.img_path = save_region(page, content.to_shown(block.bbox), images_dir) or ""
    for gi, grid in enumerate(grids):
        cells: dict[tuple[int, int], str] = {}
        for (g, r, c), chars in in_cells.items():
            if g == gi:
                text = ""
                for ln in chars_to_lines(chars):
                    text = join_words(text, ln.text)
                cells[(r, c)] = text
        table = _table_block(grid, cells)
        if table is not None:
            table.img_path = save_region(page, content.to_shown(table.bbox), images_dir) or ""
            anchored.append(table)
    for obj, box in figures:
        if any(inside((box[0] + box[2]) / 2, (box[1] + box[3]) / 2, t.bbox) for t in anchored):
            continue
        rel = save_image(obj, images_dir, content.frame.rotation)
        if rel:
            anchored.append(Block(type="image", bbox=box, img_path=rel))
    return attach_captions(order_blocks(blocks, anchored, content.width))


def _ocr_blocks(
    page: pdfium.PdfPage, content: PageContent, job: PageJob
) -> tuple[list[Block], int]:
    check_languages(job.langs)  # a missing language fails the task, not just this page
    gray = render_gray(page, job.dpi)
    flat = Image.fromarray(flatten_paper(gray))
    words = tesseract_words(flat, job.langs, job.dpi)
    turn = 0
    if looks_turned(words):  # is the page lying on its side?
        turn = tesseract_rotation(flat, job.dpi)
        if turn:
            upright = np.ascontiguousarray(np.rot90(gray, k=-turn // 90))
            again = tesseract_words(Image.fromarray(flatten_paper(upright)), job.langs, job.dpi)
            # keep it if it reads as upright text at least as surely as the page needs
            bar = min(mean_confidence(words), TURNED_BELOW_CONF)
            if standing_share(again) <= 0.5 and mean_confidence(again) >= bar:
                gray, words = upright, again
            else:
                turn = 0
    shown = content.shown
    frame = shown.turned(shown.rotation + turn)  # the bitmap's frame, in points
    scale = job.dpi / 72.0
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
        rel = save_region(page, frame.to(shown, box), Path(job.images_dir))
        if rel:
            anchored.append(Block(type="image", bbox=box, img_path=rel))
    ordered = attach_captions(order_blocks(blocks, anchored, frame.size[0]))
    for block in ordered:
        block.bbox = frame.to(shown, block.bbox)
    return ordered, len(words)


_ASCENDS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789bdfhiklt")
_DESCENDS = set("gjpqyQ(),;[]{}|/@$")
CAP_HEIGHT = 0.72  # of the font size, for the Latin faces documents mostly use


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
        caps = sorted((w.y1 - w.y0) / CAP_HEIGHT for w in ws if _cap_height_word(w.text))
        heights = caps or sorted(w.y1 - w.y0 for w in ws)
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
    return lines


# -- in the worker -----------------------------------------------------------------------
IDLE_CLOSE_S = 120.0
PAGE_WINDOW_PER_PROCESS = 2


class PagePool:
    """Warm page processes shared by every docparse task of this worker process.

    Spawning a process and importing PDFium costs about a second on a busy
    machine, more than parsing a dozen pages, so the processes outlive a
    task; they are recycled every ``PAGES_PER_CHILD`` pages (bounding any
    growth in a long run) and closed after ``IDLE_CLOSE_S`` without work.
    A process that dies (the OOM killer) breaks the pool: the task fails,
    retryably, and the next one gets a fresh pool.
    """

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._users = 0
        self._idle_timer: threading.Timer | None = None

    def acquire(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
                self._idle_timer = None
            if self._executor is None:
                self._executor = ProcessPoolExecutor(
                    self.workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    max_tasks_per_child=PAGES_PER_CHILD,
                    initializer=watch_parent,
                    initargs=(os.getpid(),),
                )
            self._users += 1
            return self._executor

    def release(self, broken: bool = False) -> None:
        with self._lock:
            self._users -= 1
            if broken and self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None
            if self._users == 0 and self._executor is not None:
                self._idle_timer = threading.Timer(IDLE_CLOSE_S, self.close_if_idle)
                self._idle_timer.daemon = True
                self._idle_timer.start()

    def close_if_idle(self) -> None:
        with self._lock:
            if self._users == 0 and self._executor is not None:
                self._executor.shutdown(wait=True, cancel_futures=True)
                self._executor = None

    def close(self) -> None:
        with self._lock:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
            if self._executor is not None:
                self._executor.shutdown(wait=True, cancel_futures=True)
                self._executor = None


_pools: dict[int, PagePool] = {}
_pools_lock = threading.Lock()


@atexit.register
def close_pools() -> None:
    """Idle page processes would otherwise outlive the worker: each holds its
    queue's write end too, so it never sees the parent's end close."""
    with _pools_lock:
        pools = list(_pools.values())
    for pool in pools:
        pool.close()


def watch_parent(parent: int) -> None:
    """In each page process: exit when the worker is gone, even if it was SIGKILLed."""

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="conveyor-parent-watch", daemon=True).start()


def shared_pool(workers: int) -> PagePool:
    with _pools_lock:
        pool = _pools.get(workers)
        if pool is None:
            pool = _pools[workers] = PagePool(workers)
        return pool


class PagePoolBroken(RuntimeError):
    """A page process died mid-page."""


@dataclass
class LiteSummary:
    pages: int = 0
    text_pages: int = 0
    scanned_pages: int = 0
    ocr_pages: int = 0
    failed_pages: int = 0
    failed: list[int] = field(default_factory=list)  # 1-based numbers of the failed pages


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
) -> LiteSummary:
    """Parse ``pages`` of ``path`` in parallel; each result goes to ``spool``, in page order.

    At most ``PAGE_WINDOW_PER_PROCESS`` pages per process are in flight, so
    neither queued work nor finished-but-unwritten results grow with the
    document.
    """
    summary = LiteSummary()
    pool = shared_pool(workers)
    executor = pool.acquire()
    broken = False
    window = pool.workers * PAGE_WINDOW_PER_PROCESS
    todo = iter(pages)
    pending: deque[Future[dict[str, Any]]] = deque()

    def fill() -> None:
        while len(pending) < window:
            p = next(todo, None)
            if p is None:
                return
            job = PageJob(str(path), p, str(images_dir), ocr, langs)
            pending.append(executor.submit(parse_page, job))

    try:
        with spool.open("w", encoding="utf-8") as out:
            fill()
            done = 0
            while pending:
                if cancel.is_set():  # pages already finished must not be taken either
                    raise TaskCancelled("cancelled")
                fut = pending[0]
                while True:
                    try:
                        result = fut.result(timeout=0.5)
                        break
                    except FuturesTimeout:
                        if cancel.is_set():
                            raise TaskCancelled("cancelled") from None
                pending.popleft()
                fill()
                done += 1
                out.write(json.dumps(result, ensure_ascii=False) + "\n")
                summary.pages += 1
                if result.get("error"):
                    summary.failed_pages += 1
                    summary.failed.append(int(result["page_idx"]) + 1)
                elif result["kind"] == "scanned":
                    summary.scanned_pages += 1
                else:
                    summary.text_pages += 1
                if result.get("method") == "ocr":
                    summary.ocr_pages += 1
                on_page(done, len(pages), result)
    except BrokenProcessPool as exc:
        broken = True
        raise PagePoolBroken(
            "a page process died while parsing (out of memory?); the task will be retried"
        ) from exc
    finally:
        for fut in pending:
            fut.cancel()
        pool.release(broken=broken)
    return summary
