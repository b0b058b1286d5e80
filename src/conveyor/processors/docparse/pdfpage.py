"""One PDF page read with pypdfium2: characters, rules, images, and the text/scanned call.

This module runs inside the page pool's processes.  Everything it returns
is plain data; images are written straight into the task's ``images/``
folder under a content hash, so a figure repeated on many pages is stored
once, as MinerU does.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import re
import tempfile
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

from conveyor.processors.docparse.layout import Char
from conveyor.processors.docparse.limits import MAX_PAGE_PIXELS
from conveyor.processors.docparse.tables import Segment

Box = tuple[float, float, float, float]

# fewer printable characters than this on a page means its text layer is missing
MIN_TEXT_CHARS = 20
# an image covering this share of the page is the page itself (a scan)
SCAN_COVERAGE = 0.5
# images smaller than this (points, either side) are bullets and rules, not figures
MIN_FIGURE_PT = 24.0


@dataclass(frozen=True)
class PageFrame:
    """From PDF user space (points, y up, before the page's ``/Rotate``) to the page as
    it is shown: origin at the top-left of its box, y down, turned by ``/Rotate``.

    A landscape page is often a portrait page whose content is drawn turned and
    shown upright by ``/Rotate``: only in the shown frame do its lines run left
    to right, and only there do boxes match the rendered page (and MinerU's).
    """

    left: float
    bottom: float
    width: float  # of the box, before rotation
    height: float
    rotation: int  # clockwise: 0, 90, 180 or 270

    @classmethod
    def of(cls, page: pdfium.PdfPage) -> PageFrame:
        left, bottom, right, top = page.get_bbox()
        return cls(left, bottom, right - left, top - bottom, page.get_rotation() % 360)

    @property
    def size(self) -> tuple[float, float]:
        """Width and height as shown."""
        if self.rotation in (90, 270):
            return self.height, self.width
        return self.width, self.height

    def point(self, x: float, y: float) -> tuple[float, float]:
        x, y = x - self.left, y - self.bottom
        if self.rotation == 90:
            return y, x
        if self.rotation == 180:
            return self.width - x, y
        if self.rotation == 270:
            return self.height - y, self.width - x
        return x, self.height - y

    def unpoint(self, u: float, v: float) -> tuple[float, float]:
        if self.rotation == 90:
            x, y = v, u
        elif self.rotation == 180:
            x, y = self.width - u, v
        elif self.rotation == 270:
            x, y = self.width - v, self.height - u
        else:
            x, y = u, self.height - v
        return x + self.left, y + self.bottom

    def box(self, left: float, bottom: float, right: float, top: float) -> Box:
        (ax, ay), (bx, by) = self.point(left, bottom), self.point(right, top)
        return min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)

    def turned(self, rotation: int) -> PageFrame:
        return PageFrame(self.left, self.bottom, self.width, self.height, rotation % 360)

    def to(self, other: PageFrame, box: Box) -> Box:
        """A box of this frame in ``other`` (the same page under another turn)."""
        (ax, ay), (bx, by) = self.unpoint(box[0], box[1]), self.unpoint(box[2], box[3])
        return other.box(min(ax, bx), min(ay, by), max(ax, bx), max(ay, by))


@dataclass
class PageContent:
    chars: list[Char]
    segments: list[Segment]
    image_boxes: list[tuple[float, float, float, float]]
    printable: int
    frame: PageFrame  # the frame everything above is in
    shown: PageFrame  # the page as shown, which outputs use
    drawings: list[Box] = field(default_factory=list)  # each path object's box

    @property
    def width(self) -> float:
        return self.frame.size[0]

    @property
    def height(self) -> float:
        return self.frame.size[1]

    def to_shown(self, box: Box) -> Box:
        return box if self.frame == self.shown else self.frame.to(self.shown, box)

    @property
    def image_coverage(self) -> float:
        area = self.width * self.height
        if area <= 0:
            return 0.0
        covered = sum(max(0.0, x1 - x0) * max(0.0, y1 - y0) for x0, y0, x1, y1 in self.image_boxes)
        return min(1.0, covered / area)

    @property
    def scanned(self) -> bool:
        """As MinerU's classifier asks: is there a usable text layer, or only a picture?"""
        if self.printable >= MIN_TEXT_CHARS:
            return False
        return self.image_coverage >= SCAN_COVERAGE or self.printable == 0


FIXED_PITCH = 0x1  # PDF font descriptor flags
FORCE_BOLD = 0x40000
# math fonts: TeX's italic/symbol/extension/AMS ones, Word's Cambria Math, STIX, Symbol
MATH_NAMES = ("cmmi", "cmsy", "cmex", "msam", "msbm", "math", "stix", "symbol", "mtextra", "esint")
MONO_NAMES = ("mono", "courier", "consol", "menlo", "typewriter", "fixed", "nimbusmon", "cmtt")


# bold fonts by name: "Bold", "Black", "Semibold", "Demi", and TeX's bold extended
# families (cmbx10, sfbx1200, ecbx, lmbx): PDFium weighs CMBX10 at 570
BOLD_NAMES = re.compile(r"bold|black|heavy|demi|(?:cm|sf|ec|tc|lm|cmss)bx|cmb\d|bx\d")
# small caps fonts by name: TeX's cmcsc/*-sc, OpenType "SmallCaps", "SC" suffixes
SMALL_CAPS = re.compile(r"csc|smallcap|small-cap|smcp|(?:^|[-+_])sc(?:$|[-_])|caps$")
# effective size (points), bold, fixed pitch, math, small caps
CharStyle = tuple[float, bool, bool, bool, bool]


def _char_style(
    textpage: pdfium.PdfTextPage, index: int, cache: dict[int, CharStyle], matrix: Any
) -> CharStyle:
    """Size as set on the page, bold (from the weight, or the name when no weight is
    recorded), fixed pitch, math; once per text object (its characters share them).

    The size is the font size operator's times the scale of the text matrix and the
    CTM, as PDFium gives them for the character: TeX through dvips sets every font
    at 1 pt and scales it with the matrix, and ``FPDFText_GetFontSize`` (PDFium 159)
    reports the operand alone.  The scale is the glyph's height across its baseline
    (the matrix's determinant over its baseline's length), so a turned, slanted or
    horizontally squeezed font keeps its size.
    """
    obj = pdfium_c.FPDFText_GetTextObject(textpage.raw, index)
    key = ctypes.cast(obj, ctypes.c_void_p).value or 0
    if key and key in cache:
        return cache[key]
    size = float(pdfium_c.FPDFText_GetFontSize(textpage.raw, index))
    if pdfium_c.FPDFText_GetMatrix(textpage.raw, index, matrix):
        base = math.hypot(matrix.a, matrix.b)
        if base > 0:
            scale = abs(matrix.a * matrix.d - matrix.b * matrix.c) / base
            if scale > 0:
                size *= scale
    buf = ctypes.create_string_buffer(256)
    flags = ctypes.c_int(0)
    n = pdfium_c.FPDFText_GetFontInfo(textpage.raw, index, buf, 256, ctypes.byref(flags))
    name = buf.raw[: max(0, n - 1)].decode("utf-8", errors="replace").lower()
    weight = pdfium_c.FPDFText_GetFontWeight(textpage.raw, index)
    bold = weight >= 600 or bool(flags.value & FORCE_BOLD) or bool(BOLD_NAMES.search(name))
    mono = bool(flags.value & FIXED_PITCH) or any(m in name for m in MONO_NAMES)
    is_math = any(m in name for m in MATH_NAMES)
    style = (size, bold, mono, is_math, bool(SMALL_CAPS.search(name.split("+")[-1])))
    if key:
        cache[key] = style
    return style


@dataclass
class _RawChar:
    text: str
    ink: Box  # user space: left, bottom, right, top
    advance: Box | None
    size: float
    bold: bool
    mono: bool
    math: bool
    caps: bool  # a small caps font
    angle: int  # clockwise degrees of its baseline in user space, to the nearest 90


def _raw_chars(page: pdfium.PdfPage) -> tuple[list[_RawChar | str], int]:
    """The text layer in user space; line breaks and spaces as plain strings."""
    textpage = page.get_textpage()
    try:
        out: list[_RawChar | str] = []
        style_cache: dict[int, CharStyle] = {}
        matrix = pdfium_c.FS_MATRIX()
        printable = 0
        left, right = ctypes.c_double(), ctypes.c_double()
        bottom, top = ctypes.c_double(), ctypes.c_double()
        box_refs = tuple(ctypes.byref(v) for v in (left, right, bottom, top))
        loose = pdfium_c.FS_RECTF()
        # PDFium's calls and the page's handle looked up once: a page has thousands of
        # characters, and each attribute lookup shows in the profile
        raw_page = textpage.raw
        get_unicode = pdfium_c.FPDFText_GetUnicode
        get_box = pdfium_c.FPDFText_GetCharBox
        get_loose = pdfium_c.FPDFText_GetLooseCharBox
        get_angle = pdfium_c.FPDFText_GetCharAngle
        count = textpage.count_chars()
        i = -1
        while i + 1 < count:
            i += 1
            code = get_unicode(raw_page, i)
            if code == 0:
                continue
            if 0xD800 <= code <= 0xDFFF:
                # PDFium gives a character above U+FFFF (math italic U+1D45B) as two
                # UTF-16 halves at two indices: join them; drop a half on its own
                low = get_unicode(raw_page, i + 1) if i + 1 < count else 0
                if code >= 0xDC00 or not 0xDC00 <= low <= 0xDFFF:
                    continue
                code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                i += 1  # the box, font and size are the first half's
                text = chr(code)
                at = i - 1
            else:
                text = chr(code) if code < 0x110000 else "\ufffd"
                at = i
            if text in ("\r", "\n") or text.isspace():
                out.append(text)
                continue
            if unicodedata.category(text) == "Cc":
                # PDFium's mark for a hyphen it found at a line's end is U+0002: it is
                # the hyphen (joined with the next line's word later); any other control
                # code is a glyph whose font maps it to nothing readable
                if code != 2 or not pdfium_c.FPDFText_IsHyphen(textpage.raw, at):
                    continue
                text = "-"
            get_box(raw_page, at, *box_refs)
            advance = None
            if get_loose(raw_page, at, loose):
                advance = (loose.left, loose.bottom, loose.right, loose.top)
            angle = get_angle(raw_page, at)
            printable += text.isprintable() and text != "\ufffd"
            out.append(
                _RawChar(
                    text,
                    (left.value, bottom.value, right.value, top.value),
                    advance,
                    *_char_style(textpage, at, style_cache, matrix),
                    round(math.degrees(angle) / 90) * 90 % 360 if angle >= 0 else 0,
                )
            )
        return out, printable
    finally:
        textpage.close()


def reading_rotation(raw: list[_RawChar | str], shown: int) -> int:
    """The turn of the page under which most of its text runs left to right.

    Usually the page's own ``/Rotate``; a page whose content was turned the
    other way (a scan fed sideways, then OCR'd into a text layer) is read in
    the turn its text needs, and its boxes are mapped back afterwards.
    """
    votes: dict[int, int] = {}
    for ch in raw:
        if isinstance(ch, _RawChar):
            turn = (360 - ch.angle) % 360
            votes[turn] = votes.get(turn, 0) + 1
    if not votes:
        return shown
    best = max(votes.values())
    return shown if votes.get(shown, 0) == best else max(votes, key=lambda k: votes[k])


def chars_in(raw: list[_RawChar | str], frame: PageFrame) -> list[Char]:
    chars: list[Char] = []
    box = frame.box
    if frame.rotation == 0:  # most pages: the same mapping as frame.box, inlined
        dx, dy, height = frame.left, frame.bottom, frame.height

        def box(left: float, bottom: float, right: float, top: float) -> Box:
            return (
                min(left, right) - dx,
                height - (max(bottom, top) - dy),
                max(left, right) - dx,
                height - (min(bottom, top) - dy),
            )

    for ch in raw:
        if isinstance(ch, str):
            chars.append(Char(ch, 0, 0, 0, 0))
            continue
        x0, y0, x1, y1 = box(*ch.ink)
        # Across, the advance (the loose box), not the ink: the ink of a narrow
        # glyph leaves a gap that reads as a space ("11" came out "1 1").
        if x1 > x0 and ch.advance is not None:
            adv = box(*ch.advance)
            x0, x1 = min(x0, adv[0]), max(x1, adv[2])
        chars.append(
            Char(
                ch.text,
                x0,
                y0,
                x1,
                y1,
                size=ch.size,
                bold=ch.bold,
                mono=ch.mono,
                math=ch.math,
                caps=ch.caps,
            )
        )
    return chars


def read_segments(page: pdfium.PdfPage, frame: PageFrame) -> list[Segment]:
    """Straight strokes and thin boxes from the page's paths, in page space."""
    return read_paths(page, frame)[0]


def read_paths(page: pdfium.PdfPage, frame: PageFrame) -> tuple[list[Segment], list[Box]]:
    """Straight strokes and thin boxes from the page's paths, and each path's box (what
    a vector drawing is made of), in page space."""
    segments: list[Segment] = []
    boxes: list[Box] = []
    x, y = ctypes.c_float(), ctypes.c_float()
    for obj in page.get_objects(filter=(pdfium_c.FPDF_PAGEOBJ_PATH,), max_depth=4):
        m = obj.get_matrix()
        count = pdfium_c.FPDFPath_CountSegments(obj.raw)
        if count <= 0 or count > 20000:
            continue
        points: list[tuple[float, float, int, bool]] = []
        for k in range(count):
            seg = pdfium_c.FPDFPath_GetPathSegment(obj.raw, k)
            pdfium_c.FPDFPathSegment_GetPoint(seg, ctypes.byref(x), ctypes.byref(y))
            px = m.a * x.value + m.c * y.value + m.e
            py = m.b * x.value + m.d * y.value + m.f
            kind = pdfium_c.FPDFPathSegment_GetType(seg)
            close = bool(pdfium_c.FPDFPathSegment_GetClose(seg))
            points.append((*frame.point(px, py), kind, close))
        if points:
            xs, ys = [pt[0] for pt in points], [pt[1] for pt in points]
            boxes.append((min(xs), min(ys), max(xs), max(ys)))
        start: tuple[float, float] | None = None
        prev: tuple[float, float] | None = None
        for px, py, kind, close in points:
            if kind == pdfium_c.FPDF_SEGMENT_MOVETO:
                start = prev = (px, py)
                continue
            if prev is not None and kind == pdfium_c.FPDF_SEGMENT_LINETO:
                segments.append((prev[0], prev[1], px, py))
            prev = (px, py)
            if close and start is not None:
                segments.append((px, py, start[0], start[1]))
                prev = start
    return segments, boxes


def image_boxes(page: pdfium.PdfPage, frame: PageFrame) -> list[tuple[Any, Box]]:
    return [
        (obj, frame.box(*obj.get_bounds()))
        for obj in page.get_objects(filter=(pdfium_c.FPDF_PAGEOBJ_IMAGE,), max_depth=4)
    ]


def read_page(page: pdfium.PdfPage) -> tuple[PageContent, list[tuple[Any, Box]]]:
    """Everything in the frame the page's text reads in (see :class:`PageFrame`);
    ``content.shown`` maps boxes back to the page as it is shown."""
    shown = PageFrame.of(page)
    raw, printable = _raw_chars(page)
    frame = shown.turned(reading_rotation(raw, shown.rotation))
    # text running another way than the page's own (an arXiv stamp up the margin, a
    # chart's turned axis label) is not part of its headings and paragraphs
    raw = [ch for ch in raw if isinstance(ch, str) or (360 - ch.angle) % 360 == frame.rotation]
    images = image_boxes(page, frame)
    segments, drawings = read_paths(page, frame)
    content = PageContent(
        chars=chars_in(raw, frame),
        segments=segments,
        drawings=drawings,
        image_boxes=[box for _, box in images],
        printable=printable,
        frame=frame,
        shown=shown,
    )
    return content, images


def save_region(
    page: pdfium.PdfPage,
    box: Box,
    images_dir: Path,
    max_pixels: int = MAX_PAGE_PIXELS,
    dpi: int = 144,
) -> str | None:
    """Render part of a page (a table, as MinerU keeps one) to a JPEG under its hash,
    at ``dpi`` or lower so the picture stays within ``max_pixels``."""
    width, height = page.get_size()
    pad = 2.0
    x0, y0, x1, y1 = box
    crop = (
        max(0.0, x0 - pad),
        max(0.0, height - y1 - pad),
        max(0.0, width - x1 - pad),
        max(0.0, y0 - pad),
    )
    area = max(x1 - x0 + 2 * pad, 1.0) * max(y1 - y0 + 2 * pad, 1.0)
    scale = min(dpi / 72.0, math.sqrt(max_pixels / area))
    try:
        pil = page.render(scale=scale, crop=crop).to_pil()
    except Exception:
        return None
    return save_pil(pil, images_dir)


def save_image(
    obj: pdfium.PdfObject, images_dir: Path, turn: int = 0, max_pixels: int = MAX_PAGE_PIXELS
) -> str | None:
    """Write an embedded image as JPEG under its content hash; None if it cannot be
    decoded, or is bigger than ``max_pixels`` (render its region instead).

    ``turn`` is the clockwise rotation of the frame the page reads in, so a figure
    on a landscape page comes out upright like its text."""
    try:
        w, h = obj.get_px_size()
        if w * h > max_pixels:
            return None
        bitmap = obj.get_bitmap(render=True)
        pil = bitmap.to_pil()
    except Exception:
        return None
    if turn:
        pil = pil.rotate(-turn, expand=True)
    return save_pil(pil, images_dir)


def save_pil(pil: Any, images_dir: Path) -> str:
    """JPEG under the hash of its pixels, written once (a repeated figure is stored once).

    Pages holding the same figure are parsed in parallel processes, so several
    may write it at once: each writes its own temporary file and renames it
    over the name, and whichever rename lands last leaves identical bytes.
    """
    if pil.mode not in ("RGB", "L"):
        pil = pil.convert("RGB")
    digest = hashlib.sha256(pil.tobytes()).hexdigest()
    name = f"{digest}.jpg"
    dest = images_dir / name
    if not dest.exists():
        fd, tmp = tempfile.mkstemp(prefix=f".{digest[:8]}-", suffix=".part", dir=images_dir)
        try:
            os.fchmod(fd, 0o644)  # mkstemp's 0600 would follow the image into the bucket
            with os.fdopen(fd, "wb") as fh:
                pil.save(fh, format="JPEG", quality=90)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return f"images/{name}"


def render_gray(page: pdfium.PdfPage, dpi: int) -> np.ndarray:
    """The page in grey at ``dpi`` (one byte a pixel; callers keep within the page cap)."""
    bitmap = page.render(scale=dpi / 72.0, grayscale=True)
    try:
        if bitmap.n_channels == 1:
            return np.array(bitmap.to_numpy())
        return np.array(bitmap.to_pil().convert("L"))
    finally:
        bitmap.close()


def flatten_paper(gray: np.ndarray, block: int = 16) -> np.ndarray:
    """The page with its paper made white: each pixel divided by the local paper tone.

    Tesseract treats a grey box (a shaded warning, a table's header row) or a
    grey page (aged paper, a photocopy) as a picture and reads nothing in it.
    The paper's tone is the brightest pixel around (text strokes are thinner
    than the 3 x 3 blocks looked at), so ink keeps its contrast.
    """
    h, w = gray.shape
    rows, cols = -(-h // block), -(-w // block)
    padded = np.pad(gray, ((0, rows * block - h), (0, cols * block - w)), mode="edge")
    local = padded.reshape(rows, block, cols, block).max(axis=(1, 3))
    paper = local.copy()
    paper[1:, :] = np.maximum(paper[1:, :], local[:-1, :])
    paper[:-1, :] = np.maximum(paper[:-1, :], local[1:, :])
    wide = paper.copy()
    wide[:, 1:] = np.maximum(wide[:, 1:], paper[:, :-1])
    wide[:, :-1] = np.maximum(wide[:, :-1], paper[:, 1:])
    tone = np.repeat(np.repeat(wide, block, axis=0), block, axis=1)[:h, :w].astype(np.float32)
    out = gray.astype(np.float32) * 255.0 / np.maximum(tone, 1.0)
    return np.clip(out, 0, 255).astype(np.uint8)


def bitmap_rules(gray: np.ndarray, scale: float) -> list[Segment]:
    """Long dark horizontal and vertical runs in a page bitmap, as segments in points.

    Letters break into short runs; rules of a table do not.  Runs shorter
    than about an inch (at the render scale) are ignored.
    """
    dark = gray < 140
    min_len = max(20, int(72 * scale * 0.6))
    segments: list[Segment] = []
    for axis in (0, 1):
        a = dark if axis == 0 else dark.T
        padded = np.zeros((a.shape[0], a.shape[1] + 2), dtype=np.int8)
        padded[:, 1:-1] = a
        diff = np.diff(padded, axis=1)
        rows_s, cols_s = np.nonzero(diff == 1)
        _rows_e, cols_e = np.nonzero(diff == -1)
        lengths = cols_e - cols_s
        keep = lengths >= min_len
        for r, s, e in zip(rows_s[keep], cols_s[keep], cols_e[keep], strict=True):
            if axis == 0:
                segments.append((s / scale, r / scale, e / scale, r / scale))
            else:
                segments.append((r / scale, s / scale, r / scale, e / scale))
    return segments
