"""PDFs for the docparse tests and bench, made with reportlab: nothing is checked in.

``make_sample_pdf`` writes a three-page document whose content the tests
know word for word: a title and numbered headings, body paragraphs, a
two-column page, a ruled table, an embedded figure and a line of Chinese.
``make_scanned_copy`` renders it to bitmaps and wraps them in an image-only
PDF, the way a scanner would.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen import canvas
from reportlab.platypus import Table, TableStyle

CJK_FONT_FILES = [
    Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"),
    Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"),
]

TITLE = "Quarterly Report on Document Parsing"
HEADINGS = ["1. Introduction", "2. Two Columns", "3. Results", "4. Figure"]
CHINESE = "文档解析测试：你好世界，欢迎使用。"
INTRO = [
    "This report describes how the parser reads text pages directly from the file.",
    "Every paragraph keeps its words in order and its headings keep their levels.",
    "Scanned pages are rendered and read by optical character recognition instead.",
]
LEFT = [
    "The left column starts here with apples.",
    "Bananas follow the apples in this column.",
    "Cherries close the left column neatly.",
    "Dates appear before the column ends.",
]
RIGHT = [
    "The right column begins with elephants.",
    "Giraffes walk after elephants here.",
    "Hippos swim near the right margin.",
    "Iguanas finish the right column.",
]
TABLE = [["Name", "Score", "City"], ["Alice", "91", "Paris"], ["Bob", "78", "Berlin"]]
FIGURE_CAPTION = "The figure below shows a colour gradient."


def cjk_font() -> str:
    """Register a CJK font: an embedded TrueType one when installed, else a CID font."""
    for path in CJK_FONT_FILES:
        if path.is_file():
            if "WQY" not in pdfmetrics.getRegisteredFontNames():
                pdfmetrics.registerFont(TTFont("WQY", str(path), subfontIndex=0))
            return "WQY"
    if "STSong-Light" not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(UnicodeCIDFont("STSong-Light"))
    return "STSong-Light"


def known_words() -> list[str]:
    """Every English word the sample's pages carry, for OCR recall."""
    text = " ".join([TITLE, *HEADINGS, *INTRO, *LEFT, *RIGHT, FIGURE_CAPTION])
    text += " " + " ".join(c for row in TABLE for c in row)
    words = [w.strip(".,:;") for w in text.split()]
    return [w for w in words if w.isalpha()]


def _figure() -> Image.Image:
    img = Image.new("RGB", (240, 160))
    draw = ImageDraw.Draw(img)
    for x in range(240):
        draw.line([(x, 0), (x, 159)], fill=(x, 100, 255 - x))
    draw.ellipse([80, 40, 160, 120], fill=(250, 220, 40))
    return img


def draw_sample_page(c: canvas.Canvas, page: int, *, number: int | None = None) -> None:
    """One of the three sample pages; ``number`` adds a footer (for long documents)."""
    w, h = A4
    if page == 0:
        c.setFont("Helvetica-Bold", 22)
        c.drawString(60, h - 80, TITLE)
        c.setFont("Helvetica-Bold", 15)
        c.drawString(60, h - 125, HEADINGS[0])
        c.setFont("Helvetica", 11)
        y = h - 150
        for line in INTRO:
            c.drawString(60, y, line)
            y -= 15
        c.setFont(cjk_font(), 12)
        c.drawString(60, y - 12, CHINESE)
    elif page == 1:
        c.setFont("Helvetica-Bold", 15)
        c.drawString(60, h - 80, HEADINGS[1])
        c.setFont("Helvetica", 11)
        for col, lines in ((60, LEFT), (315, RIGHT)):
            y = h - 110
            for line in lines:
                c.drawString(col, y, line)
                y -= 15
    else:
        c.setFont("Helvetica-Bold", 15)
        c.drawString(60, h - 80, HEADINGS[2])
        _ruled_table(c, h - 110)
        c.setFont("Helvetica-Bold", 15)
        c.drawString(60, h - 230, HEADINGS[3])
        c.setFont("Helvetica", 11)
        c.drawString(60, h - 252, FIGURE_CAPTION)
        _draw_figure(c, h - 280)
    if number is not None:
        c.setFont("Helvetica", 9)
        c.drawString(w / 2 - 20, 30, f"Page {number}")
    c.showPage()


def make_sample_pdf(path: Path, *, repeat: int = 1) -> Path:
    """The three sample pages, ``repeat`` times over (3 x repeat pages)."""
    c = canvas.Canvas(str(path), pagesize=A4)
    n = 0
    for _ in range(repeat):
        for page in range(3):
            n += 1
            draw_sample_page(c, page, number=n if repeat > 1 else None)
    c.save()
    return path


CAPTIONS = {
    "table": ["Table 1: Scores by city", "表 2：城市得分"],
    "image": ["Figure 2. A colour gradient with a sun.", "Figure 3: The sun again"],
}
REFERENCE = "Figure 2 shows the gradient and Table 1 lists the scores."


def _ruled_table(c: canvas.Canvas, top: float) -> float:
    """The sample's ruled table with its top edge at ``top``; returns its bottom edge."""
    table = Table(TABLE, colWidths=[120, 80, 120], rowHeights=24)
    table.setStyle(
        TableStyle(
            [
                ("GRID", (0, 0), (-1, -1), 1, colors.black),
                ("FONT", (0, 0), (-1, -1), "Helvetica", 11),
                ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
            ]
        )
    )
    _tw, th = table.wrapOn(c, *A4)
    table.drawOn(c, 60, top - th)
    return top - th


def _draw_figure(c: canvas.Canvas, top: float, left: float = 60) -> float:
    from reportlab.lib.utils import ImageReader

    buf = io.BytesIO()
    _figure().save(buf, format="PNG")
    buf.seek(0)
    c.drawImage(ImageReader(buf), left, top - 160, width=240, height=160)
    return top - 160


def make_captioned_pdf(path: Path) -> Path:
    """Two pages of tables and figures with captions (one Chinese, one bold), and a
    paragraph that names a figure without being its caption."""
    c = canvas.Canvas(str(path), pagesize=A4)
    _w, h = A4
    c.setFont("Helvetica-Bold", 18)
    c.drawString(60, h - 80, "Captions")
    c.setFont("Helvetica", 11)
    c.drawString(60, h - 120, REFERENCE)
    c.drawString(60, h - 136, "The paragraph above names them; the captions label them.")
    c.setFont("Helvetica-Oblique", 10)
    c.drawString(60, h - 200, CAPTIONS["table"][0])
    bottom = _ruled_table(c, h - 208)
    c.setFont("Helvetica", 11)
    c.drawString(60, bottom - 40, "Body text continues after the table.")
    bottom = _draw_figure(c, bottom - 70)
    c.setFont("Helvetica-Oblique", 10)
    c.drawString(60, bottom - 16, CAPTIONS["image"][0])
    c.setFont("Helvetica", 11)
    c.drawString(60, bottom - 60, "And the page ends with a last plain line.")
    c.showPage()
    c.setFont(cjk_font(), 11)
    c.drawString(60, h - 80, CAPTIONS["table"][1])
    bottom = _ruled_table(c, h - 88)
    c.setFont("Helvetica", 11)
    c.drawString(60, bottom - 40, "A second figure follows, with a bold caption.")
    bottom = _draw_figure(c, bottom - 70)
    c.setFont("Helvetica-Bold", 11)
    c.drawString(60, bottom - 16, CAPTIONS["image"][1])
    c.showPage()
    c.save()
    return path


def make_landscape_pdf(path: Path) -> Path:
    """A landscape page as LaTeX's pdflscape makes one: a portrait page whose content is
    drawn turned a quarter anticlockwise and shown upright by ``/Rotate 90``."""
    import pypdfium2 as pdfium

    drawn = path.with_suffix(".drawn.pdf")
    c = canvas.Canvas(str(drawn), pagesize=A4)
    w = A4[0]
    c.translate(w, 0)
    c.rotate(90)  # from here on, a landscape sheet A4[1] wide and w high
    c.setFont("Helvetica-Bold", 20)
    c.drawString(60, w - 70, TITLE)
    c.setFont("Helvetica-Bold", 15)
    c.drawString(60, w - 110, HEADINGS[2])
    c.setFont("Helvetica", 11)
    for i, line in enumerate(INTRO):
        c.drawString(60, w - 135 - i * 15, line)
    _ruled_table(c, w - 200)
    _draw_figure(c, w - 200, left=460)
    c.showPage()
    c.save()
    pdf = pdfium.PdfDocument(drawn)
    try:
        pdf[0].set_rotation(90)
        pdf.save(path)
    finally:
        pdf.close()
    drawn.unlink()
    return path


BORDERLESS = {
    "money": [
        ["Region", "2024", "2025", "Change"],
        ["North", "1,204", "1,350", "+12%"],
        ["South", "980", "1,015", "+4%"],
        ["East", "2,311", "2,096", "-9%"],
        ["West", "745", "802", "+8%"],
    ],
    "booktabs": [
        ["Model", "Params", "Accuracy"],
        ["Tiny", "5M", "71.2"],
        ["Base", "86M", "80.4"],
        ["Large", "307M", "84.9"],
    ],
    "chinese": [["城市", "人口", "面积"], ["北京", "2189万", "16410"], ["上海", "2487万", "6340"]],
    "numbers": [["12", "3", "0"], ["2", "15", "1"], ["0", "4", "18"]],
}
CODE = ["r       INTEGER,", "s       INTEGER,", "other   OtherStruct,", "z       INTEGER OPTIONAL"]
PROSE = [
    "This paragraph sits above the first table and runs across the",
    "whole width of the page so that its words never line up with the",
    "columns of the table that follows it below.",
]
BULLETS = ["First item of the list", "Second item, a little longer", "Third and last item"]


def make_borderless_pdf(path: Path) -> Path:
    """Tables with no vertical rules: one with no rules at all (numbers set flush
    right), one with booktabs' three horizontal rules, one in Chinese; around them a
    paragraph, a bulleted and a numbered list, which must stay text."""
    c = canvas.Canvas(str(path), pagesize=A4)
    _w, h = A4
    c.setFont("Helvetica", 11)
    y = h - 70
    for line in PROSE:
        c.drawString(60, y, line)
        y -= 15
    y -= 20
    for r, row in enumerate(BORDERLESS["money"]):
        c.setFont("Helvetica-Bold" if r == 0 else "Helvetica", 11)
        c.drawString(60, y, row[0])
        for x, cell in zip((220, 300, 380), row[1:], strict=True):
            c.drawRightString(x, y, cell)
        y -= 16
    y -= 24
    c.setFont("Helvetica", 11)
    for item in BULLETS:
        c.drawString(60, y, "•")
        c.drawString(78, y, item)
        y -= 15
    y -= 10
    for i, item in enumerate(BULLETS):
        c.drawString(60, y, f"{i + 1}.")
        c.drawString(80, y, item)
        y -= 15
    y -= 24
    c.setLineWidth(1)
    c.line(60, y + 14, 330, y + 14)
    for r, row in enumerate(BORDERLESS["booktabs"]):
        for x, cell in zip((60, 170, 260), row, strict=True):
            c.drawString(x, y, cell)
        if r == 0:
            c.line(60, y - 5, 330, y - 5)
        y -= 18
    c.line(60, y + 12, 330, y + 12)
    y -= 30
    c.setFont(cjk_font(), 11)
    for row in BORDERLESS["chinese"]:
        for x, cell in zip((60, 160, 260), row, strict=True):
            c.drawString(x, y, cell)
        y -= 17
    y -= 20
    c.setFont("Helvetica", 11)
    c.drawString(60, y, "A closing sentence ends the page.")
    c.showPage()
    c.setFont("Courier", 10)  # code lined up with spaces: not a table
    y = h - 80
    for line in CODE:
        c.drawString(60, y, line)
        y -= 13
    y -= 40
    c.setFont("Helvetica", 11)  # only digits: a table all the same
    for row in BORDERLESS["numbers"]:
        for x, cell in zip((100, 160, 220), row, strict=True):
            c.drawRightString(x, y, cell)
        y -= 16
    c.showPage()
    c.save()
    return path


MERGED = [
    ["Region", "Sales", ""],
    ["", "2024", "2025"],
    ["North", "120", "135"],
    ["South", "98", "101"],
]
MERGED_HTML = (
    '<table><tr><td rowspan="2">Region</td><td colspan="2">Sales</td></tr>'
    "<tr><td>2024</td><td>2025</td></tr>"
    "<tr><td>North</td><td>120</td><td>135</td></tr>"
    "<tr><td>South</td><td>98</td><td>101</td></tr></table>"
)


def make_merged_table_pdf(path: Path) -> Path:
    """A ruled table whose header merges two rows and two columns."""
    c = canvas.Canvas(str(path), pagesize=A4)
    _w, h = A4
    c.setFont("Helvetica", 11)
    c.drawString(60, h - 70, "Sales by region, with a two-level header.")
    table = Table(MERGED, colWidths=[120, 80, 80], rowHeights=24)
    table.setStyle(
        TableStyle(
            [
                ("GRID", (0, 0), (-1, -1), 1, colors.black),
                ("FONT", (0, 0), (-1, -1), "Helvetica", 11),
                ("SPAN", (1, 0), (2, 0)),
                ("SPAN", (0, 0), (0, 1)),
                ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
            ]
        )
    )
    _tw, th = table.wrapOn(c, *A4)
    table.drawOn(c, 60, h - 100 - th)
    c.showPage()
    c.save()
    return path


DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
EQUATIONS = ["α + β = γ − δ", "∇ ⋅ E = ρ / ε₀"]
MATH_PROSE = [
    "The two results below follow from the definitions in the previous",
    "section and hold for every state we consider in this report.",
]
INLINE_MATH = "Let α be small and x ≥ 0 hold for every case we study here."


def make_equations_pdf(path: Path) -> Path:
    """Two displayed formulas between paragraphs, and a sentence with a little inline
    mathematics that must stay text (DejaVu Sans has the symbols)."""
    if "DejaVu" not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(TTFont("DejaVu", str(DEJAVU)))
    c = canvas.Canvas(str(path), pagesize=A4)
    w, h = A4
    c.setFont("DejaVu", 11)
    y = h - 80
    for line in MATH_PROSE:
        c.drawString(60, y, line)
        y -= 15
    for eq in EQUATIONS:
        y -= 22
        c.setFont("DejaVu", 13)
        c.drawCentredString(w / 2, y, eq)
        y -= 10
    y -= 30
    c.setFont("DejaVu", 11)
    c.drawString(60, y, INLINE_MATH)
    c.showPage()
    c.save()
    return path


WARNING_BOX = [
    "WARNING: Disconnect the power cable before opening the cover.",
    "Never operate the machine with the safety guard removed.",
    "Wear protective gloves when handling the cutting blades.",
]


def make_shaded_box_pdf(path: Path, *, shade: float = 0.78) -> Path:
    """Paragraphs around a box of text on a light grey background."""
    c = canvas.Canvas(str(path), pagesize=A4)
    _w, h = A4
    c.setFont("Helvetica", 11)
    c.drawString(60, h - 80, "Read these instructions before using the machine.")
    c.setFillGray(shade)
    c.rect(55, h - 200, 480, 90, fill=1, stroke=0)
    c.setFillGray(0)
    for i, line in enumerate(WARNING_BOX):
        c.drawString(70, h - 135 - i * 20, line)
    c.drawString(60, h - 240, "The rest of this chapter explains the set-up.")
    c.showPage()
    c.save()
    return path


def make_scanned_copy(src: Path, dest: Path, *, dpi: int = 200, paper: int = 255) -> Path:
    """Render every page to a grey bitmap and keep only the bitmaps: an image-only PDF
    (``paper`` below 255 darkens the whole page, as aged paper or a grey copy does)."""
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument(src)
    try:
        images = [pdf[i].render(scale=dpi / 72, grayscale=True).to_pil() for i in range(len(pdf))]
    finally:
        pdf.close()
    images = [im.convert("L") for im in images]
    if paper < 255:
        images = [im.point(lambda v: v * paper // 255) for im in images]
    images[0].save(dest, format="PDF", save_all=True, append_images=images[1:], resolution=dpi)
    return dest


def make_encrypted_pdf(path: Path, password: str = "secret") -> Path:
    from reportlab.lib.pdfencrypt import StandardEncryption

    c = canvas.Canvas(str(path), pagesize=A4, encrypt=StandardEncryption(password, canPrint=0))
    c.setFont("Helvetica", 12)
    c.drawString(60, 700, "A locked page.")
    c.showPage()
    c.save()
    return path


def make_zero_page_pdf(path: Path) -> Path:
    """A well-formed PDF whose page tree is empty (reportlab always adds a page)."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [] /Count 0 >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for off in offsets:
        out += f"{off:010d} 00000 n \n".encode()
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    path.write_bytes(bytes(out))
    return path
