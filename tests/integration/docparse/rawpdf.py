"""PDFs written operator by operator, for mechanisms reportlab does not produce.

reportlab sets every font at its size with ``Tf`` and an identity text matrix;
real documents do not (TeX through dvips sets fonts at 1 pt and scales them
with ``Tm``, a page may be scaled by ``cm``).  These helpers write such content
streams by hand, with the standard 14 fonts (no font files needed).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

FONTS = {
    "F1": "Times-Roman",
    "F2": "Times-Bold",
    "F3": "Helvetica",
    "F4": "Courier",
}


def escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def write_pdf(path: Path, pages: Sequence[str], size: tuple[float, float] = (612, 792)) -> Path:
    """One content stream per page (PDF operators as text, Latin-1)."""
    fonts = " ".join(
        f"/{name} << /Type /Font /Subtype /Type1 /BaseFont /{base} /Encoding /WinAnsiEncoding >>"
        for name, base in FONTS.items()
    )
    objs: list[bytes] = [b"<< /Type /Catalog /Pages 2 0 R >>"]
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(len(pages)))
    objs.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode())
    for i, content in enumerate(pages):
        data = content.encode("latin-1")
        objs.append(
            (
                f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {size[0]} {size[1]}] "
                f"/Resources << /Font << {fonts} >> >> /Contents {4 + 2 * i} 0 R >>"
            ).encode()
        )
        objs.append(b"<< /Length %d >>\nstream\n" % len(data) + data + b"\nendstream")
    out = b"%PDF-1.4\n"
    offsets = []
    for n, obj in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + obj + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    path.write_bytes(out)
    return path


def text_at(
    x: float, y: float, text: str, size: float, font: str = "F1", *, matrix_scaled: bool = True
) -> str:
    """One run of text whose top-left baseline is (x, y) from the page's bottom-left:
    ``matrix_scaled`` sets the font at 1 pt and scales it by the text matrix, as dvips does."""
    if matrix_scaled:
        return f"BT /{font} 1 Tf {size} 0 0 {size} {x} {y} Tm ({escape(text)}) Tj ET\n"
    return f"BT /{font} {size} Tf 1 0 0 1 {x} {y} Tm ({escape(text)}) Tj ET\n"


def rule(x0: float, y0: float, x1: float, y1: float, width: float = 0.5) -> str:
    return f"{width} w {x0} {y0} m {x1} {y1} l S\n"


def box(x: float, y: float, w: float, h: float, *, fill: float | None = None) -> str:
    """A rectangle from (x, y) (bottom-left), stroked, or filled in grey ``fill``."""
    if fill is None:
        return f"0.5 w {x} {y} {w} {h} re S\n"
    return f"{fill} g {x} {y} {w} {h} re f 0 g\n"
