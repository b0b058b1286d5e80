"""Issue 13, finding 4: docparse memory bombs against a real ``conveyor up`` with auth on.

A few hundred bytes of PDF (one blank page 3000 pt or 14400 pt a side) and a
16 KB group4 TIFF of three 9000 x 9000 frames used to cost gigabytes, the
TIFF inside the API's own process, and Pillow's DecompressionBombError was
retried as an internal error.  Each must now fail its task as
``invalid_input`` on the first attempt while the API process's resident
memory stays within 200 MB of where it was before the upload (measured every
20 ms, and printed), and an ordinary document still parses afterwards.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pypdfium2 as pdfium
import pytest
from PIL import Image, ImageDraw
from reportlab.pdfgen import canvas

from tests.conftest import FAST_ENV, Server, launch, need_tool
from tests.rss import _rss_kib, _tree

API_GROWTH_LIMIT_MB = 200
PAGE_WORKERS = 2
PAGE_MEMORY_MB = 1536  # the default address-space limit of a page process
TASK_TIMEOUT_S = 300.0


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, httpx.Client]]:
    need_tool("tesseract")
    env = {
        **FAST_ENV,
        "CONVEYOR_AUTH": "on",
        "CONVEYOR_TRIGGER_ENABLED": "false",
        "CONVEYOR_DOCPARSE_WORKERS": str(PAGE_WORKERS),
    }
    srv = launch(tmp_path_factory.mktemp("bombs"), "up", env=env)
    try:
        m = re.search(r"\b(cvy_[0-9a-f]+_[A-Za-z0-9_-]{43})\b", srv.log_text())
        assert m, srv.log_text()
        admin = {"Authorization": f"Bearer {m.group(1)}"}
        r = httpx.post(
            f"{srv.url}/api/tokens", json={"name": "bomber", "role": "operator"}, headers=admin
        )
        assert r.status_code == 201, r.text
        token = r.json()["token"]
        client = httpx.Client(
            base_url=srv.url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        )
        yield srv, client
        client.close()
    finally:
        srv.stop()


class ApiRss:
    """Peak RSS of the API process alone (and, for the record, of its children), every 20 ms."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start_kib = _rss_kib(pid)
        self.peak_kib = self.start_kib
        self.children_peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, _rss_kib(self.pid))
            kids = sum(_rss_kib(p) for p in _tree(self.pid) if p != self.pid)
            self.children_peak_kib = max(self.children_peak_kib, kids)
            self._stop.wait(0.02)

    def __enter__(self) -> ApiRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mb(self) -> float:
        return (self.peak_kib - self.start_kib) / 1024


def _submit_and_wait(client: httpx.Client, path: Path, key: str) -> dict[str, Any]:
    r = client.put(f"/api/files/input/{key}", content=path.read_bytes())
    assert r.status_code in (200, 201), r.text
    body = {
        "kind": "docparse",
        "input_bucket": "input",
        "input_key": key,
        "params": {"engine": "lite", "ocr_langs": ["eng"]},
    }
    r = client.post("/api/queue/add", json=body)
    assert r.status_code == 201, r.text
    task_id = r.json()["task_id"]
    deadline = time.monotonic() + TASK_TIMEOUT_S
    task: dict[str, Any] = {}
    while time.monotonic() < deadline:
        task = client.get(f"/api/tasks/{task_id}").json()
        # a retry would show as pending again with attempts > 0: stop at the first end
        if task["status"] in ("completed", "failed", "cancelled") or task["attempts"] > 1:
            break
        time.sleep(0.2)
    return task


def _run_bomb(up: tuple[Server, httpx.Client], path: Path, key: str) -> None:
    srv, client = up
    started = time.monotonic()
    with ApiRss(srv.proc.pid) as rss:
        task = _submit_and_wait(client, path, key)
    elapsed = time.monotonic() - started
    print(
        f"\n{path.name} ({path.stat().st_size} bytes): status={task.get('status')} "
        f"error_code={task.get('error_code')} attempts={task.get('attempts')} "
        f"in {elapsed:.1f} s; API process RSS {rss.start_kib / 1024:.0f} MiB -> peak "
        f"{rss.peak_kib / 1024:.0f} MiB (+{rss.growth_mb:.0f} MiB); page processes' peak "
        f"{rss.children_peak_kib / 1024:.0f} MiB; error: {task.get('error')}"
    )
    assert task["status"] == "failed", task
    assert task["error_code"] == "invalid_input", task
    assert task["attempts"] == 1, task
    assert rss.growth_mb < API_GROWTH_LIMIT_MB, f"API process grew {rss.growth_mb:.0f} MiB"
    # and the page processes (plus tesseract) stayed within their limits too
    assert rss.children_peak_kib / 1024 < PAGE_WORKERS * PAGE_MEMORY_MB, rss.children_peak_kib
    assert task["outputs"] == [], task["outputs"]


def _blank_page_pdf(path: Path, side_pt: float) -> Path:
    pdf = pdfium.PdfDocument.new()
    pdf.new_page(side_pt, side_pt)
    pdf.save(path)
    pdf.close()
    return path


def test_blank_3000pt_page(up: tuple[Server, httpx.Client], tmp_path: Path) -> None:
    pdf = _blank_page_pdf(tmp_path / "page-3000pt.pdf", 3000)
    assert pdf.stat().st_size < 2048
    _run_bomb(up, pdf, "bombs/page-3000pt.pdf")


def test_blank_14400pt_page(up: tuple[Server, httpx.Client], tmp_path: Path) -> None:
    pdf = _blank_page_pdf(tmp_path / "page-14400pt.pdf", 14400)
    _run_bomb(up, pdf, "bombs/page-14400pt.pdf")


def test_three_frame_group4_tiff(up: tuple[Server, httpx.Client], tmp_path: Path) -> None:
    frames = []
    for i in range(3):
        frame = Image.new("1", (9000, 9000), 1)
        ImageDraw.Draw(frame).rectangle((1000 + i * 100, 1000, 2000, 1100), fill=0)
        frames.append(frame)
    tiff = tmp_path / "frames.tiff"
    frames[0].save(tiff, compression="group4", save_all=True, append_images=frames[1:])
    del frames
    assert tiff.stat().st_size < 64 * 1024
    _run_bomb(up, tiff, "bombs/frames.tiff")


def test_an_ordinary_document_still_parses(up: tuple[Server, httpx.Client], tmp_path: Path) -> None:
    """After the bombs, the page processes (rebuilt where one died) parse a real PDF."""
    _, client = up
    path = tmp_path / "plain.pdf"
    c = canvas.Canvas(str(path))
    c.setFont("Helvetica", 12)
    c.drawString(72, 760, "After the bombs the parser still reads this sentence.")
    c.drawString(72, 740, "A second line of ordinary text for the text layer check.")
    c.save()
    task = _submit_and_wait(client, path, "docs/plain.pdf")
    print(f"\nplain.pdf: status={task.get('status')} attempts={task.get('attempts')}")
    assert task["status"] == "completed", task
    md = client.get("/api/files/output/docs/plain/plain.md").text
    assert "still reads this sentence" in md, md
