"""Limits on input and a page pool that cannot hang (issue 13 finding 4, issue 16 finding 1).

Real files generated here, real PDFium, real tesseract, real page processes:
big pages are read at a lower resolution or refused, image frames are decoded
one at a time and never in the worker's process, an image bomb inside a PDF
stays within the page processes' memory limit, characters above U+FFFF are
read, and a page process that is killed or runs past its time is replaced.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pypdfium2 as pdfium
import pytest
from PIL import Image, ImageDraw, ImageFont
from reportlab.pdfgen import canvas

from conveyor.errors import InputRejected, ProcessorError
from tests.integration.docparse.conftest import Harness, Recorder
from tests.rss import _rss_kib, _tree

ROOT = Path(__file__).resolve().parents[3]
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


@dataclass
class Limited:
    """Worker settings with the docparse limits (the defaults are config.py's)."""

    docparse_workers: int = 1
    mineru_api_url: str = ""
    docparse_max_page_pixels: int = 36_000_000
    docparse_min_dpi: int = 150
    docparse_max_document_pixels: int = 20_000_000_000
    docparse_page_memory_mb: int = 1536
    docparse_page_timeout: float = 600.0


class Sampler:
    """Peak RSS of this process alone and of its descendants (page processes, tesseract)."""

    def __init__(self) -> None:
        self.me = os.getpid()
        self.start_kib = _rss_kib(self.me)
        self.peak_kib = self.start_kib
        self.children_peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, _rss_kib(self.me))
            kids = sum(_rss_kib(p) for p in _tree(self.me) if p != self.me)
            self.children_peak_kib = max(self.children_peak_kib, kids)
            self._stop.wait(0.02)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mb(self) -> float:
        return (self.peak_kib - self.start_kib) / 1024


def _write_pdf(path: Path, objects: list[bytes]) -> Path:
    """A PDF from its objects (1: catalog, 2: page tree, ...), with a correct xref."""
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, obj in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + obj + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    path.write_bytes(bytes(out))
    return path


def _stream(data: bytes, extra: bytes = b"") -> bytes:
    return b"<< /Length %d %s>>\nstream\n" % (len(data), extra) + data + b"\nendstream"


# A text layer whose italic n, alpha and x map (ToUnicode) to U+1D45B and U+1D6FC,
# which PDFium hands out as UTF-16 surrogate pairs, and to a lone high surrogate.
MATH_CMAP = b"""/CIDInit /ProcSet findresource begin
12 dict begin
begincmap
/CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def
/CMapName /Conveyor-MathItalic-UCS def
/CMapType 2 def
1 begincodespacerange
<00> <FF>
endcodespacerange
3 beginbfchar
<6E> <D835DC5B>
<61> <D835DEFC>
<78> <D835>
endbfchar
endcmap
CMapName currentdict /CMapResource defineresource pop
end
end"""


def make_math_italic_pdf(path: Path) -> Path:
    lines = [
        [("F1", "Let "), ("F2", "n"), ("F1", " be the number of items and "), ("F2", "a")],
        [("F1", "A lone half "), ("F2", "x"), ("F1", " is dropped from the text of this line.")],
        [("F1", "Plain words on a third line so that the page has a text layer.")],
    ]
    content = b"BT\n"
    for n, parts in enumerate(lines):
        content += b"1 0 0 1 72 %d Tm\n" % (760 - 20 * n)
        for font, text in parts:
            content += b"/%s 14 Tf (%s) Tj\n" % (font.encode(), text.encode("latin-1"))
    content += b"ET"
    return _write_pdf(
        path,
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 5 0 R /F2 6 0 R >> >> /Contents 4 0 R >>",
            _stream(content),
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Times-Italic "
            b"/Encoding /WinAnsiEncoding /ToUnicode 7 0 R >>",
            _stream(MATH_CMAP),
        ],
    )


def make_image_bomb_pdf(path: Path, side_px: int) -> Path:
    """A text page with a white ``side_px`` square grey image drawn 300 pt wide: a few
    hundred KB of Flate that decode to ``side_px``² bytes."""
    packer = zlib.compressobj(9)
    row = b"\xff" * side_px
    data = b"".join(packer.compress(row) for _ in range(side_px)) + packer.flush()
    text = b"".join(
        b"BT /F1 12 Tf 72 %d Td (Line %d of the text around a very large picture.) Tj ET\n"
        % (740 - 16 * i, i)
        for i in range(6)
    )
    content = text + b"q 300 0 0 300 150 300 cm /Im0 Do Q"
    image = (
        b"/Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceGray "
        b"/BitsPerComponent 8 /Filter /FlateDecode " % (side_px, side_px)
    )
    return _write_pdf(
        path,
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << "
            b"/Font << /F1 5 0 R >> /XObject << /Im0 6 0 R >> >> /Contents 4 0 R >>",
            _stream(content),
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
            _stream(data, image),
        ],
    )


def make_scanned_page(path: Path, size_pt: tuple[float, float], words: list[str]) -> Path:
    """An image-only page ``size_pt`` large, its text drawn big into a 150 dpi bitmap."""
    dpi = 150
    w, h = int(size_pt[0] / 72 * dpi), int(size_pt[1] / 72 * dpi)
    img = Image.new("L", (w, h), 255)
    draw = ImageDraw.Draw(img)
    font = ImageFont.truetype(FONT, 48)
    for i, line in enumerate(words):
        draw.text((150, 150 + i * 120), line, fill=0, font=font)
    png = path.with_suffix(".png")
    img.save(png, dpi=(dpi, dpi))
    c = canvas.Canvas(str(path), pagesize=size_pt)
    c.drawImage(str(png), 0, 0, *size_pt)
    c.save()
    return path


# -- characters above U+FFFF (issue 16, finding 1) ----------------------------------------
def test_letters_above_the_bmp_are_read_and_a_lone_half_dropped(
    harness: Harness, tmp_path: Path
) -> None:
    pdf = make_math_italic_pdf(tmp_path / "math.pdf")
    codes = _pdfium_codes(pdf)
    assert codes[4:6] == [0xD835, 0xDC5B], "PDFium gives U+1D45B as two UTF-16 halves"
    rec = Recorder()
    outputs = harness.run(pdf, recorder=rec, engine="lite", ocr="off")
    md = harness.markdown(outputs)
    print(f"\nmarkdown: {md!r}")
    assert "Let \U0001d45b be the number of items and \U0001d6fc" in md, md
    assert re.search(r"A lone half\s+is dropped", md), md
    assert not any(0xD800 <= ord(c) <= 0xDFFF for c in md)
    assert not [ln for ln in rec.logs if "could not be parsed" in ln], rec.logs
    items = harness.content_list(outputs)
    assert any("\U0001d6fc" in str(i.get("text", "")) for i in items), items


def _pdfium_codes(path: Path) -> list[int]:
    import pypdfium2.raw as pdfium_c

    pdf = pdfium.PdfDocument(path)
    try:
        tp = pdf[0].get_textpage()
        return [pdfium_c.FPDFText_GetUnicode(tp.raw, i) for i in range(tp.count_chars())]
    finally:
        pdf.close()


# -- a pool that cannot hang (issue 16, finding 1) ----------------------------------------
def _page_processes() -> list[int]:
    found = []
    for pid in _tree(os.getpid()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if b"spawn_main" in fh.read():
                    found.append(pid)
        except OSError:
            continue
    return found


def _running_tesseract(pid: int) -> bool:
    for child in _tree(pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as fh:
                if fh.read().startswith(b"tesseract"):
                    return True
        except OSError:
            continue
    return False


def test_a_page_process_killed_mid_page_is_replaced(
    harness: Harness, scanned_pdf: Path, with_tesseract: None
) -> None:
    rec = Recorder()
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["outputs"] = harness.run(
                scanned_pdf, recorder=rec, settings=Limited(), ocr_langs=["eng"]
            )
        except BaseException as exc:
            result["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    killed: list[int] = []
    deadline = time.monotonic() + 120
    while not killed and worker.is_alive() and time.monotonic() < deadline:
        for pid in _page_processes():
            if _running_tesseract(pid):  # it is mid-page: OCR running
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break
        time.sleep(0.05)
    worker.join(180)
    print(f"\nkilled page process {killed}; logs: {rec.logs}")
    assert killed, "no page process was caught mid-page"
    assert "error" not in result, result
    failed = [ln for ln in rec.logs if "could not be parsed" in ln]
    assert not failed, failed
    pages = _pages(scanned_pdf)
    assert f"Pages: 0 with a text layer, {pages} scanned, {pages} OCR'd, 0 failed" in rec.logs
    # the killed page was read again, in a fresh process: every page has its text
    items = harness.content_list(result["outputs"])
    assert {i["page_idx"] for i in items if i.get("text")} == set(range(pages)), items
    assert "Quarterly Report" in harness.markdown(result["outputs"])


def _pages(path: Path) -> int:
    pdf = pdfium.PdfDocument(path)
    try:
        return len(pdf)
    finally:
        pdf.close()


def test_pages_past_the_timeout_fail_and_the_pool_recovers(
    harness: Harness, scanned_pdf: Path, sample_pdf: Path, with_tesseract: None
) -> None:
    """Every OCR page (English and Chinese) takes longer than 0.2 s: each is killed, the
    task fails retryably (timeouts may be the host's load), the next task parses."""
    started = time.monotonic()
    with pytest.raises(ProcessorError) as err:
        harness.run(scanned_pdf, settings=Limited(docparse_page_timeout=0.2))
    took = time.monotonic() - started
    print(f"\ntimed out in {took:.1f} s: {err.value}")
    assert err.value.retryable and err.value.code == "timeout", err.value
    assert "took longer than 0.2 s" in str(err.value)
    assert took < 60
    outputs = harness.run(sample_pdf, key="docs/after.pdf", settings=Limited(), engine="lite")
    assert "Quarterly Report" in harness.markdown(outputs)


# -- big pages, image bombs, frames (issue 13, finding 4) ---------------------------------
def test_a_big_scanned_page_is_read_at_a_lower_resolution(
    harness: Harness, tmp_path: Path, with_tesseract: None
) -> None:
    """An A3 scan at 200 dpi is 7.7 Mpx: under a 4 Mpx cap it is read at 143 dpi, and
    refused with the reason when the cap would take it below the lowest resolution."""
    words = ["Conveyor reads big pages", "at a lower resolution"]
    pdf = make_scanned_page(tmp_path / "a3.pdf", (842, 1191), words)
    small = Limited(docparse_max_page_pixels=4_000_000, docparse_min_dpi=100)
    md = harness.markdown(harness.run(pdf, settings=small, ocr_langs=["eng"]))
    assert "big pages" in md and "lower resolution" in md, md
    with pytest.raises(InputRejected) as err:
        harness.run(pdf, key="docs/a3-again.pdf", settings=replace(small, docparse_min_dpi=150))
    print(f"\n{err.value}")
    assert "842 x 1191 pt" in str(err.value) and "over the limit of 4 Mpx per page" in str(
        err.value
    )


def test_an_image_bomb_inside_a_pdf_stays_within_the_memory_limit(
    harness: Harness, tmp_path: Path
) -> None:
    """A 20000 x 20000 picture (400 Mpx from 400 KB): not decoded whole into a bitmap,
    its region rendered at a capped size, the page process held to its limit."""
    pdf = make_image_bomb_pdf(tmp_path / "picture.pdf", 20000)
    assert pdf.stat().st_size < 1024 * 1024
    settings = Limited(docparse_page_memory_mb=1024)
    with Sampler() as rss:
        outputs = harness.run(pdf, settings=settings, engine="lite", ocr="off")
    print(
        f"\n{pdf.stat().st_size} bytes: this process +{rss.growth_mb:.0f} MiB, "
        f"page processes' peak {rss.children_peak_kib / 1024:.0f} MiB"
    )
    assert rss.children_peak_kib / 1024 < settings.docparse_page_memory_mb
    assert rss.growth_mb < 100
    assert "Line 3 of the text around" in harness.markdown(outputs)
    assert any(i["type"] == "image" for i in harness.content_list(outputs))


def test_tiff_frames_are_decoded_one_at_a_time_outside_the_worker(
    harness: Harness, tmp_path: Path
) -> None:
    """Six 20 Mpx RGB frames (360 MB decoded): the worker's process decodes none, and the
    page process converting them holds one at a time."""
    tiff = tmp_path / "frames.tiff"
    frames = []
    for i in range(6):
        frame = Image.new("RGB", (5000, 4000), (250, 250, 245))
        ImageDraw.Draw(frame).rectangle((400, 400 + i * 200, 3000, 900 + i * 200), fill=(20, i, 90))
        frames.append(frame)
    frames[0].save(
        tiff, compression="tiff_lzw", save_all=True, append_images=frames[1:], dpi=(200, 200)
    )
    del frames, frame
    with Sampler() as rss:
        outputs = harness.run(tiff, settings=Limited(), ocr="off")
    print(
        f"\n{tiff.stat().st_size} bytes, 6 x 20 Mpx: this process +{rss.growth_mb:.0f} MiB, "
        f"page processes' peak {rss.children_peak_kib / 1024:.0f} MiB"
    )
    assert rss.growth_mb < 100, "the worker's own process decoded the image"
    assert rss.children_peak_kib / 1024 < 1536
    assert harness.output(outputs, "markdown").meta["pages"] == 6
    assert sorted({i["page_idx"] for i in harness.content_list(outputs)}) == list(range(6))


def test_frames_stream_into_the_pdf_one_at_a_time(tmp_path: Path) -> None:
    """``image_to_pdf`` alone, in a fresh process: its peak is about one frame, not six."""
    tiff = tmp_path / "six.tiff"
    frames = [Image.new("L", (6000, 5000), 255) for _ in range(6)]  # 30 MB each decoded
    for i, f in enumerate(frames):
        ImageDraw.Draw(f).rectangle((100, 100 + 300 * i, 4000, 300 + 300 * i), fill=0)
    frames[0].save(tiff, compression="tiff_lzw", save_all=True, append_images=frames[1:])
    del frames
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from conveyor.processors.docparse.inputs import image_to_pdf\n"
        "def hwm():\n"
        "    s = open('/proc/self/status').read()\n"
        "    return int(s.split('VmHWM:')[1].split()[0])\n"
        "base = hwm()\n"
        "n = image_to_pdf(Path(sys.argv[1]), Path(sys.argv[2]))\n"
        "print(n, (hwm() - base) // 1024)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run(
        [sys.executable, "-c", script, str(tiff), str(tmp_path / "six.pdf")],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout.split()
    pages, grew_mb = int(out[0]), int(out[1])
    print(f"\n6 frames of 30 MB: image_to_pdf grew by {grew_mb} MiB")
    assert pages == 6
    assert grew_mb < 100, "all frames were held at once"
    pdf = pdfium.PdfDocument(tmp_path / "six.pdf")
    try:
        assert len(pdf) == 6
        w, h = pdf[0].get_size()
        assert (round(w), round(h)) == (2160, 1800)  # 6000 x 5000 px at 200 dpi
        gray = pdf[5].render(scale=0.1, grayscale=True).to_numpy()
        assert gray.min() < 50 and gray.max() > 200  # the frame's own bar is there
    finally:
        pdf.close()


def test_pillow_decompression_bomb_is_invalid_input(harness: Harness, tmp_path: Path) -> None:
    """Pillow's own DecompressionBombError (200 Mpx declared) fails once, as invalid_input."""
    png = tmp_path / "huge.png"
    Image.new("1", (20000, 10000), 1).save(png)
    with pytest.raises(InputRejected) as err:
        harness.run(png, settings=Limited())
    print(f"\n{png.stat().st_size} bytes: {err.value}")
    assert err.value.retryable is False and err.value.code == "invalid_input"
    assert "20000 x 10000" in str(err.value) or "decompression bomb" in str(err.value)
