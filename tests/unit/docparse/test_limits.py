"""The docparse limits: what a page, a frame and a document may cost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from conveyor.config import Settings
from conveyor.processors.docparse.limits import DocLimits, InputTooLarge, mpx

ROOT = Path(__file__).resolve().parents[3]
LIMITS = DocLimits()


@pytest.mark.parametrize(
    ("size", "dpi"),
    [
        ((595, 842), 200),  # A4
        ((1684, 2384), 200),  # A1: 31 Mpx at 200 dpi, under the cap
        ((2384, 3370), 152),  # A0: read at 152 dpi
    ],
)
def test_pages_are_rendered_at_200_dpi_or_lower_to_fit(size: tuple[int, int], dpi: int) -> None:
    assert LIMITS.render_dpi(*size) == dpi
    w, h = size
    assert w * h * (dpi / 72) ** 2 <= LIMITS.max_page_pixels


@pytest.mark.parametrize(
    ("side", "need"),
    [(3000, "39 Mpx"), (14400, "900 Mpx")],
)
def test_a_page_too_big_even_at_the_lowest_resolution_is_refused(side: int, need: str) -> None:
    with pytest.raises(InputTooLarge) as err:
        LIMITS.render_dpi(side, side)
    msg = str(err.value)
    assert f"{side} x {side} pt" in msg and need in msg and "limit of 36 Mpx per page" in msg
    assert "CONVEYOR_DOCPARSE_MAX_PAGE_PIXELS" in msg


def test_regions_are_scaled_down_never_refused() -> None:
    assert LIMITS.region_scale(200, 100, 144) == 2.0
    scale = LIMITS.region_scale(14400, 14400, 144)
    assert 14400 * 14400 * scale**2 == pytest.approx(LIMITS.max_page_pixels)


def test_frames_and_documents() -> None:
    LIMITS.check_frame(1, 6000, 6000)
    with pytest.raises(InputTooLarge, match=r"image frame 3 is 9000 x 9000 pixels \(81 Mpx\)"):
        LIMITS.check_frame(3, 9000, 9000)
    LIMITS.check_document(19_000_000_000, "pages")
    with pytest.raises(InputTooLarge, match=r"come to 20\.5 Gpx, over the limit of 20\.0 Gpx"):
        LIMITS.check_document(20_500_000_000, "pages rendered for OCR")
    assert mpx(36_000_000) == "36 Mpx" and mpx(1.5e9) == "1.5 Gpx"


def test_settings_defaults_are_the_limits_defaults() -> None:
    assert DocLimits.from_settings(Settings()) == DocLimits()
    assert DocLimits.from_settings(None) == DocLimits()
    custom = SimpleNamespace(docparse_max_page_pixels=4_000_000, docparse_page_memory_mb=0)
    limits = DocLimits.from_settings(custom)
    assert limits.max_page_pixels == 4_000_000 and limits.page_memory_mb == 0
    assert limits.min_dpi == DocLimits().min_dpi


def test_the_memory_limit_makes_a_big_allocation_fail_not_grow() -> None:
    script = (
        "from conveyor.processors.docparse.limits import limit_memory\n"
        "limit_memory(512)\n"
        "try:\n"
        "    b = bytearray(1024 * 1024 * 1024)\n"
        "    print('allocated')\n"
        "except MemoryError:\n"
        "    print('MemoryError')\n"
        "small = bytearray(16 * 1024 * 1024)\n"
        "print('still alive')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
        check=True,
    ).stdout.split()
    assert out == ["MemoryError", "still", "alive"], out
