"""Know the input before parsing it: PDF or image, readable, not locked, not empty,
not too big.

This runs in a page process (``prepare``), never in the worker: decoding an
image or opening a PDF is the first thing a hostile file gets to do.  Each
refusal is an ``InputRejected`` (failed, not retried) whose message says what
is wrong in words a user can act on.

An image becomes a PDF of one page per frame, written frame by frame (one
frame decoded at a time, its pixels streamed into the file through zlib), so
a multi-frame TIFF never sits in memory whole; each frame's size is checked
from its header before it is decoded.
"""

from __future__ import annotations

import re
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
from PIL import Image, UnidentifiedImageError

from conveyor.errors import InputRejected
from conveyor.processors.docparse.limits import DocLimits, InputTooLarge
from conveyor.processors.docparse.pages import select_pages

IMAGE_KINDS = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF"}
# pixels per inch assumed for an image without a resolution of its own
DEFAULT_IMAGE_DPI = 200


@dataclass
class DocInfo:
    path: Path  # always a PDF: images are wrapped into one
    kind: str  # pdf | png | jpeg | tiff
    page_count: int
    has_scans: bool = False  # a selected page has no text layer (asked for engine auto)


@dataclass(frozen=True)
class PrepareJob:
    src: str
    workdir: str
    pages: str | None  # the task's page range
    limits: DocLimits
    scan_check: bool = False


def prepare(job: PrepareJob) -> dict[str, Any]:
    """In a page process: sniff, convert an image, open the PDF, select the pages."""
    try:
        doc = open_input(Path(job.src), Path(job.workdir), job.limits)
        try:
            pages = select_pages(job.pages, doc.page_count)
        except ValueError as exc:
            raise InputRejected(str(exc)) from exc
        has_scans = job.scan_check and doc.kind == "pdf" and _has_scans(doc.path, pages)
    except InputTooLarge as exc:
        raise InputRejected(str(exc)) from exc
    return {
        "path": str(doc.path),
        "kind": doc.kind,
        "page_count": doc.page_count,
        "pages": pages,
        "has_scans": has_scans,
    }


def _has_scans(path: Path, pages: list[int]) -> bool:
    """A quick look at the text layer: any selected page without one sends auto to MinerU."""
    from conveyor.processors.docparse.pdfpage import MIN_TEXT_CHARS

    pdf = pdfium.PdfDocument(path)
    try:
        for i in pages:
            page = pdf[i]
            try:
                tp = page.get_textpage()
                n = tp.count_chars()
                tp.close()
            finally:
                page.close()
            if n < MIN_TEXT_CHARS:
                return True
    finally:
        pdf.close()
    return False


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


def image_to_pdf(src: Path, dest: Path, limits: DocLimits | None = None) -> int:
    """Wrap every frame of an image into a PDF page of the image's physical size.

    Every frame's size is checked (and the frames' sum against the document limit)
    before any is decoded; then one frame at a time is decoded and written."""
    limits = limits or DocLimits()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(src) as img:
                n = getattr(img, "n_frames", 1)
                sizes = []
                for i in range(n):
                    img.seek(i)
                    w, h = _decoded_size(img, limits)
                    limits.check_frame(i + 1, w, h)
                    sizes.append(w * h)
                limits.check_document(sum(sizes), f"{n} image frame(s)")
                dpi = _image_dpi(img)
                with dest.open("wb") as fh:
                    _write_pdf(fh, _frames(img, n, limits), dpi)
    except Image.DecompressionBombError as exc:
        raise InputRejected(f"the image is too large to decode safely: {exc}") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        if isinstance(exc, InputTooLarge):
            raise
        raise InputRejected(f"the image cannot be decoded: {exc}") from exc
    if not n:
        raise InputRejected("the image has no frames")
    return n


def _image_dpi(img: Image.Image) -> float:
    try:
        dpi = float(img.info.get("dpi", (DEFAULT_IMAGE_DPI, DEFAULT_IMAGE_DPI))[0])
    except (TypeError, ValueError, IndexError):
        dpi = DEFAULT_IMAGE_DPI
    return dpi if 10 <= dpi <= 10000 else DEFAULT_IMAGE_DPI


def _draft_factor(img: Image.Image, limits: DocLimits) -> int:
    """A JPEG over the page limit is decoded at 1/2, 1/4 or 1/8 of its size (the
    decoder's own scaling, no full-size copy): a 50 Mpx phone photo of a page
    becomes a 12.5 Mpx one.  Other formats cannot be decoded smaller."""
    w, h = img.size
    if img.format != "JPEG":
        return 1
    for factor in (1, 2, 4, 8):
        if (w // factor) * (h // factor) <= limits.max_page_pixels:
            return factor
    return 1


def _decoded_size(img: Image.Image, limits: DocLimits) -> tuple[int, int]:
    factor = _draft_factor(img, limits)
    w, h = img.size
    return -(-w // factor), -(-h // factor)


def _frames(img: Image.Image, n: int, limits: DocLimits) -> Iterator[tuple[Image.Image, float]]:
    """Each frame decoded in turn, in a mode a PDF image can hold, with its scale
    against the file's resolution (1 unless a JPEG was decoded smaller)."""
    for i in range(n):
        img.seek(i)
        full = img.size[0]
        factor = _draft_factor(img, limits)
        if factor > 1:
            img.draft(img.mode, (img.size[0] // factor, img.size[1] // factor))
        img.load()
        frame = img
        if img.mode not in ("1", "L", "RGB"):
            frame = _to_writable(img)
        yield frame, frame.size[0] / full if full else 1.0


def _to_writable(img: Image.Image) -> Image.Image:
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        top = float(arr.max()) or 1.0
        return Image.fromarray((arr * (255.0 / top)).astype(np.uint8), "L")
    if img.mode in ("LA", "La"):
        return img.convert("L")
    return img.convert("RGB")


# PDF colour space, bits per component, bits per pixel
_COLOURS = {
    "1": ("/DeviceGray", 1, 1),
    "L": ("/DeviceGray", 8, 8),
    "RGB": ("/DeviceRGB", 8, 24),
}


def _write_pdf(fh: IO[bytes], frames: Iterator[tuple[Image.Image, float]], dpi: float) -> None:
    """A PDF with one page per frame, written as the frames come: each frame's pixels
    go through zlib into the file, and only the offsets are kept."""
    offsets: dict[int, int] = {}
    fh.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")

    def begin(num: int) -> None:
        offsets[num] = fh.tell()
        fh.write(f"{num} 0 obj\n".encode())

    kids: list[int] = []
    num = 3  # 1: the catalog, 2: the page tree, written last
    for frame, scale in frames:
        space, bits, pixel_bits = _COLOURS[frame.mode]
        w, h = frame.size
        wpt, hpt = w * 72.0 / (dpi * scale), h * 72.0 / (dpi * scale)
        image, length, content, page = num, num + 1, num + 2, num + 3
        num += 4
        begin(image)
        fh.write(
            f"<< /Type /XObject /Subtype /Image /Width {w} /Height {h} /ColorSpace {space} "
            f"/BitsPerComponent {bits} /Filter /FlateDecode /Length {length} 0 R >>\n"
            "stream\n".encode()
        )
        start = fh.tell()
        packer = zlib.compressobj(6)
        rows = max(1, (1 << 25) // max(1, w * pixel_bits))  # strips of about 4 MB
        for top in range(0, h, rows):  # no second copy of the whole frame
            strip = frame.crop((0, top, w, min(h, top + rows)))
            fh.write(packer.compress(strip.tobytes()))
        fh.write(packer.flush())
        size = fh.tell() - start
        fh.write(b"\nendstream\nendobj\n")
        begin(length)
        fh.write(f"{size}\nendobj\n".encode())
        ops = f"q {wpt:.4f} 0 0 {hpt:.4f} 0 0 cm /Im0 Do Q".encode()
        begin(content)
        fh.write(f"<< /Length {len(ops)} >>\nstream\n".encode() + ops + b"\nendstream\nendobj\n")
        begin(page)
        fh.write(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {wpt:.4f} {hpt:.4f}] "
            f"/Resources << /XObject << /Im0 {image} 0 R >> >> /Contents {content} 0 R >>\n"
            "endobj\n".encode()
        )
        kids.append(page)
    begin(1)
    fh.write(b"<< /Type /Catalog /Pages 2 0 R >>\nendobj\n")
    begin(2)
    refs = " ".join(f"{k} 0 R" for k in kids)
    fh.write(f"<< /Type /Pages /Kids [{refs}] /Count {len(kids)} >>\nendobj\n".encode())
    xref = fh.tell()
    fh.write(f"xref\n0 {num}\n0000000000 65535 f \n".encode())
    for i in range(1, num):
        fh.write(f"{offsets[i]:010d} 00000 n \n".encode())
    fh.write(f"trailer\n<< /Size {num} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode())


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


def open_input(path: Path, workdir: Path, limits: DocLimits | None = None) -> DocInfo:
    """Sniff, convert an image, open the PDF: call it in a page process (``prepare``)."""
    kind = sniff(path)
    if kind != "pdf":
        pdf_path = workdir / "input-image.pdf"
        image_to_pdf(path, pdf_path, limits)
        path = pdf_path
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
