"""The pure parts of docparse: page ranges, rules to grids, lines to blocks, the outputs' shapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conveyor.processors.docparse.assemble import assemble
from conveyor.processors.docparse.layout import (
    Char,
    Line,
    chars_to_lines,
    find_gutter,
    join_words,
    lines_to_blocks,
    reading_order,
)
from conveyor.processors.docparse.model import content_item, heading_levels, scale_bbox
from conveyor.processors.docparse.ocr import parse_tsv
from conveyor.processors.docparse.pages import parse_page_range, select_pages
from conveyor.processors.docparse.tables import find_tables, to_html, to_markdown


def test_page_ranges() -> None:
    assert select_pages(None, 3) == [0, 1, 2]
    assert select_pages("2-3,1", 5) == [0, 1, 2]
    assert select_pages("4-", 6) == [3, 4, 5]
    assert select_pages("2, 9-20", 3) == [1]
    with pytest.raises(ValueError, match="outside the document's 3 page"):
        select_pages("7-9", 3)
    for bad in ("0", "3-1", "a-b", ",", "-"):
        with pytest.raises(ValueError):
            parse_page_range(bad)


def _box(x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float, float, float]]:
    return [(x0, y0, x1, y0), (x0, y1, x1, y1), (x0, y0, x0, y1), (x1, y0, x1, y1)]


def test_rules_make_a_grid_and_a_lone_rule_does_not() -> None:
    segs = _box(100, 100, 400, 200)
    segs += [(100, 150, 400, 150), (250, 100, 250, 200), (300, 100, 300, 200)]
    segs += [(50, 500, 500, 500)]  # a horizontal rule under a heading: no table
    [grid] = find_tables(segs)
    assert grid.shape == (2, 3)
    assert grid.cell_of(120, 120) == (0, 0) and grid.cell_of(390, 190) == (1, 2)
    assert grid.cell_of(10, 10) is None
    rows = [["a|b", "<c>"], ["1", ""]]
    assert (
        to_html(rows)
        == "<table><tr><td>a|b</td><td>&lt;c&gt;</td></tr><tr><td>1</td><td></td></tr></table>"
    )
    assert to_markdown(rows).splitlines() == ["| a\\|b | <c> |", "| --- | --- |", "| 1 |  |"]


def _chars(text: str, x: float, y: float, size: float = 10, bold: bool = False) -> list[Char]:
    out = []
    for i, c in enumerate(text):
        if c == " ":
            out.append(Char(" ", 0, 0, 0, 0))
        else:
            out.append(Char(c, x + i * 6, y, x + i * 6 + 5, y + size, size=size, bold=bold))
    return out


def test_characters_become_lines_with_spaces_and_cjk_joined() -> None:
    chars = [*_chars("Hello world", 10, 10), Char("\n", 0, 0, 0, 0), *_chars("你好 世界", 10, 30)]
    lines = chars_to_lines(chars)
    assert [ln.text for ln in lines] == ["Hello world", "你好世界"]
    assert join_words("infor-", "mation") == "information"
    assert join_words("中文", "文本") == "中文文本" and join_words("a", "b") == "a b"


def _line(text: str, x0: float, y0: float, size: float = 10, bold: bool = False) -> Line:
    return Line(text, x0, y0, x0 + 6 * len(text), y0 + size, size, bold, chars=len(text))


def test_two_columns_read_left_then_right_between_full_width_lines() -> None:
    lines = [_line("Full width title over both columns of the page here", 50, 40, 16)]
    for i in range(4):
        lines.append(_line(f"left {i} text", 50, 80 + 15 * i))
        lines.append(_line(f"right {i} text", 330, 80 + 15 * i))
    lines.append(_line("A full width closing paragraph running across the whole page", 50, 200))
    assert find_gutter(lines, 595) is not None
    ordered = [ln.text.split()[0] for ln in reading_order(lines, 595)]
    assert ordered == [
        "Full",
        "left",
        "left",
        "left",
        "left",
        "right",
        "right",
        "right",
        "right",
        "A",
    ]
    blocks = lines_to_blocks(reading_order(lines, 595), body=10)
    assert [b.type for b in blocks] == ["title", "text", "text", "text"]
    assert blocks[1].text == "left 0 text left 1 text left 2 text left 3 text"


def test_heading_levels_and_content_items() -> None:
    levels = heading_levels([(22.0, True), (15.0, True), (15.0, False), (11.0, True)])
    assert levels == {(22.0, True): 1, (15.0, True): 2, (15.0, False): 3, (11.0, True): 4}
    page = {"page_idx": 4, "width": 600.0, "height": 800.0}
    title = {
        "type": "title",
        "text": "Intro",
        "size": 15.0,
        "bold": True,
        "bbox": [60, 80, 300, 100],
    }
    assert content_item(title, page, levels) == {
        "type": "text",
        "text": "Intro",
        "text_level": 2,
        "page_idx": 4,
        "bbox": [100, 100, 500, 125],
    }
    table = {"type": "table", "table_html": "<table></table>", "bbox": [0, 0, 600, 800]}
    assert content_item(table, page, levels)["table_body"] == "<table></table>"
    assert scale_bbox([-5, 0, 700, 400], 600, 800) == [0, 0, 1000, 500]


def test_tesseract_tsv_to_words_in_points() -> None:
    tsv = (
        "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext\n"
        "4\t1\t1\t1\t1\t0\t100\t100\t400\t40\t-1\t\n"
        "5\t1\t1\t1\t1\t1\t100\t100\t200\t40\t96.5\tHello\n"
        "5\t1\t1\t1\t1\t2\t320\t100\t180\t40\t91\t \n"
    )
    [word] = parse_tsv(tsv, scale=2.0)
    assert (word.text, word.x0, word.y0, word.x1, word.y1) == ("Hello", 50.0, 50.0, 150.0, 70.0)
    assert (word.block, word.par, word.line, word.conf) == (1, 1, 1, 96.5)


def test_running_headers_and_footers_are_left_out(tmp_path: Path) -> None:
    """A page number at the foot of every page goes, as MinerU discards it; the same
    words in the body, or a footer on too few pages, stay."""

    def page(i: int, footer: str) -> dict[str, object]:
        return {
            "page_idx": i,
            "width": 600.0,
            "height": 800.0,
            "blocks": [
                {"type": "text", "bbox": [60, 100, 500, 140], "text": f"Body {i}. Page {i} ok"},
                {"type": "text", "bbox": [280, 760, 320, 775], "text": footer},
            ],
        }

    pages = [page(i, f"Page {i + 1}") for i in range(3)] + [page(3, "Signed: A. Lee")]
    spool = tmp_path / "spool.jsonl"
    spool.write_text("".join(json.dumps(p) + "\n" for p in pages))
    made = assemble(spool, tmp_path / "a.md", tmp_path / "a.json")
    paragraphs = (tmp_path / "a.md").read_text().strip().split("\n\n")
    assert paragraphs == [
        "Body 0. Page 0 ok",
        "Body 1. Page 1 ok",
        "Body 2. Page 2 ok",
        "Body 3. Page 3 ok",
        "Signed: A. Lee",
    ]
    assert made.discarded == 3
    items = json.loads((tmp_path / "a.json").read_text())
    assert [i["text"] for i in items if i["page_idx"] == 0] == ["Body 0. Page 0 ok"]


def test_captions_attach_to_the_neighbour_they_label() -> None:
    from conveyor.processors.docparse.captions import attach_captions
    from conveyor.processors.docparse.model import Block

    def text(s: str, y: float, x0: float = 60, kind: str = "text") -> Block:
        return Block(type=kind, bbox=(x0, y, x0 + 200, y + 10), text=s, size=10)

    table = Block(type="table", bbox=(60, 100, 380, 200))
    figure = Block(type="image", bbox=(60, 300, 300, 460))
    blocks = [
        text("Fig. 9 is referenced far above.", 20),
        text("Table IV: Yields", 86),
        table,
        text("Tablet 1 is not a label.", 205),
        figure,
        text("图 3 渐变", 466, kind="title"),
        text("Figure 4 sits in the other column.", 470, x0=320),
    ]
    out = attach_captions(blocks)
    assert table.caption == "Table IV: Yields" and figure.caption == "图 3 渐变"
    assert [b.text for b in out if b.type != "table" and b.type != "image"] == [
        "Fig. 9 is referenced far above.",
        "Tablet 1 is not a label.",
        "Figure 4 sits in the other column.",
    ]
    # a caption-like line too far away stays text
    lone = Block(type="image", bbox=(60, 300, 300, 460))
    far = text("Figure 5. Too far below.", 520)
    assert attach_captions([lone, far]) == [lone, far] and lone.caption == ""


def test_page_frame_turns_and_back() -> None:
    from conveyor.processors.docparse.pdfpage import PageFrame

    page = PageFrame(left=10, bottom=20, width=600, height=800, rotation=0)
    # corners of the box as shown, top-left origin: bottom-left of user space goes
    # to the top-left when turned 90 clockwise, the top-right at 180, the bottom-right at 270
    assert page.point(10, 20) == (0, 800)
    assert page.turned(90).point(10, 20) == (0, 0)
    assert page.turned(180).point(10, 20) == (600, 0)
    assert page.turned(270).point(10, 20) == (800, 600)
    assert page.turned(90).size == (800, 600) and page.size == (600, 800)
    box = (100.0, 50.0, 250.0, 90.0)
    for a in (0, 90, 180, 270):
        for b in (0, 90, 180, 270):
            fa, fb = page.turned(a), page.turned(b)
            there = fa.to(fb, box)
            assert fb.to(fa, there) == pytest.approx(box), (a, b)
            u, v = fa.point(123.0, 456.0)
            assert fa.unpoint(u, v) == pytest.approx((123.0, 456.0)), a


def test_a_missing_rule_merges_two_cells() -> None:
    from conveyor.processors.docparse.tables import Grid

    hs = [(0.0, 0.0, 30.0, 0.0), (0.0, 10.0, 30.0, 10.0), (0.0, 20.0, 30.0, 20.0)]
    vs = [(0.0, 0.0, 0.0, 20.0), (10.0, 0.0, 10.0, 20.0), (30.0, 0.0, 30.0, 20.0)]
    vs.append((20.0, 10.0, 20.0, 20.0))  # only in the second row
    grid = find_tables([*hs, *vs])[0]
    assert grid.shape == (2, 3)
    assert grid.merged() == {(0, 1): (0, 1, 1, 2), (0, 2): (0, 1, 1, 2)}
    assert grid.cell_of(25.0, 5.0) == (0, 1)  # text in the merge goes to its first cell
    assert grid.cell_of(25.0, 15.0) == (1, 2)
    assert to_html([["a", "b", ""], ["c", "d", "e"]], grid.merged()) == (
        '<table><tr><td>a</td><td colspan="2">b</td></tr>'
        "<tr><td>c</td><td>d</td><td>e</td></tr></table>"
    )
    # an L-shaped gap is not a rectangle: no merge
    lshape = Grid(
        xs=[0, 10, 20],
        ys=[0, 10, 20],
        hrules=[(0, 0, 20, 0), (10, 10, 20, 10), (0, 20, 20, 20)],
        vrules=[(0, 0, 0, 20), (10, 0, 10, 10), (20, 0, 20, 20)],
    )
    assert lshape.merged() == {}


def test_what_counts_as_mathematics() -> None:
    from conveyor.processors.docparse.layout import is_math

    def ch(text: str, **kw: bool) -> Char:
        return Char(text, 0, 0, 1, 1, size=10, **kw)

    assert is_math(ch("x", math=True)) and is_math(ch("∑")) and is_math(ch("α"))
    assert not is_math(ch(".", math=True))  # TeX's dot leaders use the math font's period
    assert not is_math(ch("x")) and not is_math(ch("=", mono=True))  # code, not a formula


def test_a_sentence_about_a_figure_is_not_its_caption() -> None:
    from conveyor.processors.docparse.captions import attach_captions
    from conveyor.processors.docparse.model import Block

    figure = Block(type="image", bbox=(60, 100, 300, 260))
    for text, caption in (
        ("Figure 1 shows that the gradient runs left to right.", ""),
        ("Figure 1.2 shows the same.", ""),
        ("Figure 1 The gradient", "Figure 1 The gradient"),
        ("Fig. 12: gradient", "Fig. 12: gradient"),
        ("图 1 渐变", "图 1 渐变"),
    ):
        figure.caption = ""
        below = Block(type="text", bbox=(60, 266, 300, 276), text=text, size=10)
        attach_captions([figure, below])
        assert figure.caption == caption, text
