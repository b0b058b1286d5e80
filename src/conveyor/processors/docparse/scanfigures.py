"""Figures on scanned pages: large regions of ink that OCR found no words in.

A scan has no image objects to extract; its pictures are part of the page
bitmap.  Once the words tesseract read are masked out, text leaves little
ink behind, while photographs, charts and filled diagrams leave regions
where most of the page is inked.  Sparse line drawings are not found this
way (that needs a layout model, as MinerU has).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np

from conveyor.processors.docparse.layout import shared_area
from conveyor.processors.docparse.ocr import Word

Box = tuple[float, float, float, float]

CELL_PX = 8  # the bitmap is judged in cells this many pixels square
INK_BELOW_PAPER = 55  # grey levels darker than the paper that count as ink
BUSY = 0.45  # share of inked pixels that makes a cell part of a picture
MIN_SIDE_PT = 48.0  # smaller regions are stains, stamps and bullets
MIN_FILL = 0.4  # share of busy cells in the region's box
WORD_CONF = 40.0  # words read at least this surely are text, not picture
MAX_TEXT_SHARE = 0.15  # of a region's area under sure words: a shaded box of text


def find_figures(gray: np.ndarray, scale: float, words: Sequence[Word]) -> list[Box]:
    """Boxes (points, the bitmap's frame) of the pictures on a rendered page.

    Ink is measured against the page's own paper (aged or tinted scans are not
    pictures), and a region mostly covered by words read surely is a shaded
    box of text, which stays text."""
    paper = float(np.percentile(gray, 90))
    ink = gray < paper - INK_BELOW_PAPER
    sure = [w for w in words if w.conf >= WORD_CONF and w.text.strip()]
    for w in sure:
        x0, y0 = max(0, int(w.x0 * scale) - 2), max(0, int(w.y0 * scale) - 2)
        ink[y0 : int(w.y1 * scale) + 3, x0 : int(w.x1 * scale) + 3] = False
    rows, cols = ink.shape[0] // CELL_PX, ink.shape[1] // CELL_PX
    if rows < 2 or cols < 2:
        return []
    cells = ink[: rows * CELL_PX, : cols * CELL_PX].reshape(rows, CELL_PX, cols, CELL_PX)
    busy = cells.mean(axis=(1, 3)) > BUSY
    if not busy.any():
        return []
    # bridge one-cell gaps (a masked label inside a chart, a thin white line)
    grown = busy.copy()
    grown[1:, :] |= busy[:-1, :]
    grown[:-1, :] |= busy[1:, :]
    grown[:, 1:] |= busy[:, :-1]
    grown[:, :-1] |= busy[:, 1:]
    seen = np.zeros_like(grown)
    figures: list[Box] = []
    cell_pt = CELL_PX / scale
    for r0, c0 in zip(*np.nonzero(busy), strict=True):
        if seen[r0, c0]:
            continue
        top, left, bottom, right = r0, c0, r0, c0
        queue = deque([(int(r0), int(c0))])
        seen[r0, c0] = True
        while queue:
            r, c = queue.popleft()
            top, bottom, left, right = min(top, r), max(bottom, r), min(left, c), max(right, c)
            for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                if 0 <= nr < rows and 0 <= nc < cols and grown[nr, nc] and not seen[nr, nc]:
                    seen[nr, nc] = True
                    queue.append((nr, nc))
        height, width = bottom - top + 1, right - left + 1
        if min(height, width) * cell_pt < MIN_SIDE_PT:
            continue
        if busy[top : bottom + 1, left : right + 1].mean() < MIN_FILL:
            continue
        x0, y0 = left * cell_pt, top * cell_pt
        box = (x0, y0, x0 + width * cell_pt, y0 + height * cell_pt)
        if _text_share(box, sure) <= MAX_TEXT_SHARE:
            figures.append(box)
    return figures


def _text_share(box: Box, words: Sequence[Word]) -> float:
    area = (box[2] - box[0]) * (box[3] - box[1])
    covered = sum(shared_area(box, (w.x0, w.y0, w.x1, w.y1)) for w in words)
    return covered / area if area > 0 else 1.0
