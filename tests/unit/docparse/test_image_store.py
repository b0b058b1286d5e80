"""Page processes write the same figure at once: every writer must succeed.

A figure repeated on many pages is stored once under its pixel hash; the
pages holding it are parsed in parallel processes, so several of them reach
the write together.  A shared temporary name made the loser's rename fail
and its whole page came out empty (a flaky table and footer count on a
500-page document under load).
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

from PIL import Image

from conveyor.processors.docparse.pdfpage import save_pil

WRITERS = 6
ROUNDS = 40


def _write_rounds(root: str, start: Any, results: Any) -> None:
    img = Image.new("RGB", (400, 300), (10, 200, 30))
    names = []
    try:
        for r in range(ROUNDS):
            images = Path(root) / f"round-{r}"
            images.mkdir(exist_ok=True)
            start.wait(timeout=60)
            names.append(save_pil(img, images))
    except Exception as exc:
        results.put(f"{type(exc).__name__}: {exc}")
        start.abort()
        return
    results.put(names)


def test_concurrent_writers_of_one_image_all_succeed(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")  # as the page pool starts its processes
    barrier, results = ctx.Barrier(WRITERS), ctx.Queue()
    procs = [
        ctx.Process(target=_write_rounds, args=(str(tmp_path), barrier, results))
        for _ in range(WRITERS)
    ]
    for p in procs:
        p.start()
    names = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    errors = [n for n in names if isinstance(n, str)]
    assert not errors, errors
    assert all(n == names[0] for n in names)
    assert len(set(names[0])) == 1 and names[0][0].startswith("images/")
    for r in range(ROUNDS):
        files = sorted(p.name for p in (tmp_path / f"round-{r}").iterdir())
        assert files == [Path(names[0][0]).name], files  # no partial file left behind
        with Image.open(tmp_path / f"round-{r}" / files[0]) as im:
            assert im.size == (400, 300)
