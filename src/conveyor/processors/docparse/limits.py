"""How much a document may cost: pixels per page, per image frame and per document,
and the memory and time each page process is allowed.

A PDF of a few hundred bytes can declare a page 14400 pt a side, and a 16 KB
group4 TIFF can hold frames of 9000 x 9000 pixels: rendered or decoded
whole, each is gigabytes.  So a page is rendered for OCR at 200 dpi, lowered
to fit ``max_page_pixels`` but never below ``min_dpi`` (below that OCR reads
body text poorly); a page that does not fit even then is refused, as is an
image frame over ``max_page_pixels``, before it is decoded.  Everything that
reads the input runs in page processes whose address space is capped
(``RLIMIT_AS``), so whatever slips past the caps fails that page, not the
worker, and never the API process ``conveyor up`` shares with the worker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

OCR_DPI = 200

# the defaults, as the settings document them (docs/docparse.md, "Limits on input")
MAX_PAGE_PIXELS = 36_000_000  # an A0 sheet at 150 dpi, an A4 page at 600 dpi
MIN_DPI = 150
MAX_DOCUMENT_PIXELS = 20_000_000_000  # about 5,000 A4 pages rendered at 200 dpi
PAGE_MEMORY_MB = 1536
PAGE_TIMEOUT_S = 600.0


class InputTooLarge(ValueError):
    """A page, frame or document over a limit: the input's fault, never retried."""


@dataclass(frozen=True)
class DocLimits:
    max_page_pixels: int = MAX_PAGE_PIXELS
    min_dpi: int = MIN_DPI
    max_document_pixels: int = MAX_DOCUMENT_PIXELS
    page_memory_mb: int = PAGE_MEMORY_MB  # address space of each page process; 0: no limit
    page_timeout_s: float = PAGE_TIMEOUT_S

    @classmethod
    def from_settings(cls, settings: object) -> DocLimits:
        """The limits ``settings`` set: the service's settings, the kind's own, or any
        object with their names as attributes (``docparse_max_page_pixels``, …)."""
        from .settings import DocparseSettings

        cfg = DocparseSettings.of(settings)
        return cls(
            max_page_pixels=cfg.max_page_pixels,
            min_dpi=cfg.min_dpi,
            max_document_pixels=cfg.max_document_pixels,
            page_memory_mb=cfg.page_memory_mb,
            page_timeout_s=cfg.page_timeout,
        )

    def render_dpi(self, width_pt: float, height_pt: float, want: int = OCR_DPI) -> int:
        """The resolution to render a whole page at: ``want``, or lower so the bitmap stays
        within ``max_page_pixels``; InputTooLarge when even ``min_dpi`` would not."""
        area = max(width_pt, 1.0) * max(height_pt, 1.0)
        if area * (want / 72.0) ** 2 <= self.max_page_pixels:
            return want
        dpi = math.floor(72.0 * math.sqrt(self.max_page_pixels / area))
        if dpi >= self.min_dpi:
            return dpi
        need = area * (self.min_dpi / 72.0) ** 2
        raise InputTooLarge(
            f"the page is {width_pt:.0f} x {height_pt:.0f} pt "
            f"({width_pt / 72 * 2.54:.0f} x {height_pt / 72 * 2.54:.0f} cm): read by OCR at "
            f"{self.min_dpi} dpi it would take {mpx(need)}, over the limit of "
            f"{mpx(self.max_page_pixels)} per page (CONVEYOR_DOCPARSE_MAX_PAGE_PIXELS)"
        )

    def region_scale(self, width_pt: float, height_pt: float, dpi: float) -> float:
        """Render scale for part of a page (a table, a figure): ``dpi``, or lower so the
        picture stays within ``max_page_pixels``.  Pictures are never refused."""
        area = max(width_pt, 1.0) * max(height_pt, 1.0)
        return min(dpi / 72.0, math.sqrt(self.max_page_pixels / area))

    def check_frame(self, number: int, width: int, height: int) -> None:
        """An image frame over the page limit is refused before it is decoded."""
        if width * height > self.max_page_pixels:
            raise InputTooLarge(
                f"image frame {number} is {width} x {height} pixels ({mpx(width * height)}), "
                f"over the limit of {mpx(self.max_page_pixels)} per page "
                "(CONVEYOR_DOCPARSE_MAX_PAGE_PIXELS)"
            )

    def check_document(self, pixels: int, what: str) -> None:
        if pixels > self.max_document_pixels:
            raise InputTooLarge(
                f"the document's {what} come to {mpx(pixels)}, over the limit of "
                f"{mpx(self.max_document_pixels)} per document "
                "(CONVEYOR_DOCPARSE_MAX_DOCUMENT_PIXELS); submit fewer pages with `pages`"
            )


def mpx(pixels: float) -> str:
    """``36 Mpx``, ``1.2 Gpx``: pixel counts as people read them."""
    if pixels >= 1e9:
        return f"{pixels / 1e9:.1f} Gpx"
    return f"{pixels / 1e6:.0f} Mpx"


def limit_memory(megabytes: int) -> None:
    """Cap this process's address space (and that of what it starts, tesseract), so an
    allocation past it fails here instead of growing until the OOM killer picks a victim."""
    if megabytes <= 0:
        return
    import resource

    limit = megabytes * 1024 * 1024
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
