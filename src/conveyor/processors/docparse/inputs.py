"""Know the input before parsing it: PDF or image, readable, not locked, not empty.

Each refusal is an ``InputRejected`` (failed, not retried) whose message says
what is wrong in words a user can act on.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
from PIL import Image, UnidentifiedImageError

from conveyor.errors import InputRejected

# PDFium is not thread-safe: the worker process touches it only under this lock
# (page work happens in the pool's own processes).
PDFIUM_LOCK = threading.Lock()

IMAGE_KINDS = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF"}
# pixels per inch assumed for an image without a resolution of its own
DEFAULT_IMAGE_DPI = 200


@dataclass
class DocInfo:
    path: Path  # always a PDF: images are wrapped into one
    kind: str  # pdf | png | jpeg | tiff
    page_count: int


def sniff(path: Path) -> str:
    """``pdf``, ``png``, ``jpeg`` or ``tiff`` from the first bytes, whatever the name says."""
    size = path.stat().st_size
    if size == 0:
        raise InputRejected("the input is empty (0 bytes)")
    with path.open("rb") as fh:
        head = fh.read(1024)
    if b"%PDF-" in head:
        return "pdf"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    shown = head[:16].decode("ascii", errors="replace")
    shown = "".join(c if c.isprintable() else "." for c in shown)
    raise InputRejected(
        f"the input is not a PDF or a PNG/JPEG/TIFF image (it starts with {shown!r})"
    )


def image_to_pdf(src: Path, dest: Path) -> int:
    """Wrap every frame of an image into a PDF page of the image's physical size."""
    try:
        with Image.open(src) as img:
            frames = []
            n = getattr(img, "n_frames", 1)
            for i in range(n):
                img.seek(i)
                frame = img.convert("RGB") if img.mode not in ("RGB", "L") else img.copy()
                frames.append(frame)
            dpi = (
                img.info.get("dpi", (DEFAULT_IMAGE_DPI, DEFAULT_IMAGE_DPI))[0] or DEFAULT_IMAGE_DPI
            )
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputRejected(f"the image cannot be decoded: {exc}") from exc
    if not frames:
        raise InputRejected("the image has no frames")
    frames[0].save(dest, format="PDF", save_all=True, append_images=frames[1:], resolution=dpi)
    return len(frames)


_ZERO_PAGES = re.compile(rb"/Type\s*/Pages\b[^>]*?/Count\s+0\b|/Count\s+0\b[^>]*?/Type\s*/Pages\b")
_A_PAGE = re.compile(rb"/Type\s*/Page\b(?!s)")


def _load_failure(path: Path, exc: Exception) -> str:
    """Why PDFium would not open a file, from the file itself.

    PDFium's last-error code is not reset by every failure (a zero-page
    document after an encrypted one still says "password"), so the words
    come from what the file's head and tail contain.
    """
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(65536)
        fh.seek(max(0, size - 65536))
        tail = fh.read()
    code = getattr(exc, "err_code", None)
    if b"/Encrypt" in head + tail:
        if code == pdfium_c.FPDF_ERR_SECURITY:
            return f"the PDF uses an unsupported security handler ({exc})"
        return "the PDF is encrypted and needs a password; remove the password and submit it again"
    if size <= 2 * 65536 and _ZERO_PAGES.search(head) and not _A_PAGE.search(head):
        return "the PDF has no pages"
    return "the PDF is damaged and cannot be read (its structure is broken or it is cut short)"


def open_input(path: Path, workdir: Path) -> DocInfo:
    kind = sniff(path)
    if kind != "pdf":
        pdf_path = workdir / "input-image.pdf"
        image_to_pdf(path, pdf_path)
        path = pdf_path
    with PDFIUM_LOCK:
        try:
            pdf = pdfium.PdfDocument(path)
        except pdfium.PdfiumError as exc:
            raise InputRejected(_load_failure(path, exc)) from exc
        try:
            count = len(pdf)
        finally:
            pdf.close()
    if count == 0:
        raise InputRejected("the PDF has no pages")
    return DocInfo(path=path, kind=kind, page_count=count)
