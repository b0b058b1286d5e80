"""How fast does docparse read pages, and how much memory does a long PDF take?

    python bench/docparse_throughput.py [--text-pages 60] [--scanned-pages 12]
                                        [--workers N] [--ocr-langs eng,chi_sim]
                                        [--no-pymupdf] [--rapidocr]
                                        [--big 500 [--big-scanned 20] [--only-big]]

On PDFs generated with reportlab (tests/docparse_samples.py: headings, a
two-column page, a ruled table, a figure, a line of Chinese), and an
image-only copy of them rendered at 200 dpi (the "scanned" pages):

(a) the lite engine, through ``DocparseProcessor.run`` as a worker runs it
    (download from a local folder store, per-page pool, Markdown + content
    list + images, upload), in pages per second, for text pages and for
    scanned pages (tesseract eng+chi_sim, OMP_THREAD_LIMIT=1);
(b) beside it, on the same text PDF: pypdfium2's bare text extraction (one
    process, text only: the floor of what reading a text layer costs) and
    pymupdf4llm's Markdown (one process); with ``--rapidocr``,
    rapidocr-onnxruntime on the scanned pages (one process, one thread),
    with each OCR's word recall;
(c) ``--big N``: an N-page PDF through the processor, with the peak
    resident memory of the worker process plus its page processes, sampled
    every 20 ms (the sum over the process tree, not one process's peak).

pymupdf4llm is AGPL, so it is never a dependency of Conveyor: when it is
missing, this script installs it with pip into a private folder under the
temp dir (``pip install --target``) and runs it in a subprocess from there;
the project's environment is left untouched.  ``--no-pymupdf`` skips it.
rapidocr-onnxruntime (Apache-2.0) is handled the same way: measured, not used.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.docparse_samples import known_words, make_sample_pdf, make_scanned_copy  # noqa: E402
from tests.rss import TreeRss  # noqa: E402

from conveyor.models import InputRef, Task  # noqa: E402
from conveyor.processors.base import ProcessorContext  # noqa: E402
from conveyor.processors.docparse import DocparseProcessor  # noqa: E402
from conveyor.storage.local import LocalBlobStore  # noqa: E402

PYMUPDF_DIR = Path(tempfile.gettempdir()) / "conveyor-bench-pymupdf4llm"
RAPIDOCR_DIR = Path(tempfile.gettempdir()) / "conveyor-bench-rapidocr"
LAST_MARKDOWN = [""]


def recall(text: str) -> str:
    """Share of the sample's known English words found in ``text``, and the Chinese line."""
    found = {w.lower() for w in re.findall(r"[A-Za-z]+|\d+", text)}
    expected = [w.lower() for w in known_words()]
    hits = sum(1 for w in expected if w in found)
    chinese = "yes" if "你好世界" in text.replace(" ", "") else "no"
    return (
        f"word recall {hits}/{len(expected)} = {hits / len(expected):.3f}, Chinese line: {chinese}"
    )


def rapidocr_run(pdf: Path, dpi: int = 200) -> str:
    """rapidocr-onnxruntime (its wheel ships PP-OCR models) on the scanned pages, one thread."""
    if not (RAPIDOCR_DIR / "rapidocr_onnxruntime").is_dir():
        print(f"installing rapidocr-onnxruntime (for this comparison only) into {RAPIDOCR_DIR} ...")
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--target",
                str(RAPIDOCR_DIR),
                "rapidocr-onnxruntime",
            ],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            return "pip install failed: " + r.stderr.strip().splitlines()[-1]
    code = (
        "import sys, time, json, pypdfium2 as pdfium\n"
        "from rapidocr_onnxruntime import RapidOCR\n"
        "eng = RapidOCR(intra_op_num_threads=1, inter_op_num_threads=1)\n"
        "doc = pdfium.PdfDocument(sys.argv[1]); dpi = int(sys.argv[2])\n"
        "t0 = time.perf_counter(); texts = []\n"
        "for i in range(len(doc)):\n"
        "    res, _ = eng(doc[i].render(scale=dpi / 72, grayscale=True).to_numpy())\n"
        "    texts += [t for _, t, _ in res or []]\n"
        "print(json.dumps([time.perf_counter() - t0, len(doc), ' '.join(texts)]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(RAPIDOCR_DIR), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-c", code, str(pdf), str(dpi)], capture_output=True, text=True, env=env
    )
    if r.returncode != 0:
        return "failed: " + (r.stderr.strip().splitlines() or ["?"])[-1]
    secs, pages, text = json.loads(r.stdout.strip().splitlines()[-1])
    return f"{rate((secs, pages))}  one process; {recall(text)}"


@dataclass
class Settings:
    docparse_workers: int
    mineru_api_url: str = ""


def run_processor(pdf: Path, workdir: Path, workers: int, **params: object) -> tuple[float, int]:
    """Seconds for DocparseProcessor.run on ``pdf`` and the pages it reported.

    The Markdown it wrote is kept in ``LAST_MARKDOWN`` for the recall figure.
    """
    store = LocalBlobStore(workdir / "buckets")
    key = f"bench/{pdf.name}"
    store.put_file("input", key, pdf)
    proc = DocparseProcessor(Settings(docparse_workers=workers))
    task_dir = workdir / f"task-{uuid.uuid4().hex[:8]}"
    task_dir.mkdir()
    ctx = ProcessorContext(
        task=Task(kind="docparse", input=InputRef(bucket="input", key=key), params=params),
        workdir=task_dir,
        storage=store,
        output_bucket="output",
        report_progress=lambda p, ph, m: None,
        log=lambda line: None,
    )
    t0 = time.perf_counter()
    outputs = proc.run(ctx)
    elapsed = time.perf_counter() - t0
    pages = max(int(o.meta.get("pages", 0)) for o in outputs)
    md = next(o for o in outputs if o.name == "markdown")
    # not published: the worker moves staged outputs to their final keys on completion
    with store.open(md.bucket, md.staged_key or md.key) as fh:
        LAST_MARKDOWN[0] = fh.read().decode("utf-8")
    shutil.rmtree(task_dir, ignore_errors=True)
    return elapsed, pages


def bare_pdfium(pdf: Path) -> tuple[float, int]:
    import pypdfium2 as pdfium

    t0 = time.perf_counter()
    doc = pdfium.PdfDocument(pdf)
    n = len(doc)
    chars = 0
    for i in range(n):
        page = doc[i]
        tp = page.get_textpage()
        chars += len(tp.get_text_range())
        tp.close()
        page.close()
    doc.close()
    return time.perf_counter() - t0, n


def pymupdf4llm_run(pdf: Path) -> tuple[float, int] | str:
    """pymupdf4llm.to_markdown in a subprocess, from a private install (AGPL: bench only)."""
    # pymupdf4llm 2.x is an empty shim: the code ships inside pymupdf 2.x, so install both
    if not (PYMUPDF_DIR / "pymupdf").is_dir():
        print(f"installing pymupdf4llm (AGPL, for this benchmark only) into {PYMUPDF_DIR} ...")
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--target",
                str(PYMUPDF_DIR),
                "pymupdf4llm",
                "pymupdf",
            ],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            return "pip install failed: " + r.stderr.strip().splitlines()[-1]
    code = (
        "import sys, time, pymupdf, pymupdf4llm\n"
        "t0 = time.perf_counter()\n"
        "md = pymupdf4llm.to_markdown(sys.argv[1], show_progress=False)\n"
        "n = pymupdf.open(sys.argv[1]).page_count\n"
        "print(time.perf_counter() - t0, n, len(md))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(PYMUPDF_DIR)}
    r = subprocess.run(
        [sys.executable, "-c", code, str(pdf)], capture_output=True, text=True, env=env
    )
    if r.returncode != 0:
        return "failed: " + (r.stderr.strip().splitlines() or ["?"])[-1]
    secs, pages, _ = r.stdout.split()[-3:]
    return float(secs), int(pages)


def make_big_pdf(work: Path, pages: int, scanned: int) -> Path:
    """``pages`` sample pages, the last ``scanned`` of them image-only."""
    import pypdfium2 as pdfium

    text = make_sample_pdf(work / "big-text.pdf", repeat=(pages - scanned + 2) // 3)
    doc = pdfium.PdfDocument(text)
    for i in range(len(doc) - 1, pages - scanned - 1, -1):
        doc.del_page(i)
    if scanned:
        src = make_sample_pdf(work / "big-src.pdf", repeat=(scanned + 2) // 3)
        scan = pdfium.PdfDocument(make_scanned_copy(src, work / "big-scan.pdf"))
        doc.import_pages(scan, list(range(scanned)))
    out = work / "big.pdf"
    doc.save(out)
    return out


def rate(res: tuple[float, int]) -> str:
    secs, pages = res
    return f"{pages / secs:8.1f} pages/s  ({pages} pages in {secs:.2f} s)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--text-pages", type=int, default=60)
    ap.add_argument("--scanned-pages", type=int, default=12)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--big", type=int, default=0, help="also parse an N-page PDF for peak RSS")
    ap.add_argument("--big-scanned", type=int, default=0, help="of which the last N scanned")
    ap.add_argument("--only-big", action="store_true", help="skip (a) and (b)")
    ap.add_argument("--ocr-langs", default="eng,chi_sim", help="tesseract languages")
    ap.add_argument("--no-pymupdf", action="store_true")
    ap.add_argument("--rapidocr", action="store_true", help="also time rapidocr-onnxruntime")
    args = ap.parse_args()
    langs = [x for x in args.ocr_langs.split(",") if x]

    with tempfile.TemporaryDirectory(prefix="docparse-bench-") as tmp:
        work = Path(tmp)
        print(f"CPU cores: {os.cpu_count()}, page processes: {args.workers}")
        if not args.only_big:
            text_pdf = make_sample_pdf(work / "text.pdf", repeat=max(1, args.text_pages // 3))
            scan_src = make_sample_pdf(work / "src.pdf", repeat=max(1, args.scanned_pages // 3))
            scanned_pdf = make_scanned_copy(scan_src, work / "scanned.pdf")
            print("\n(a) lite engine through DocparseProcessor.run")
            run_processor(text_pdf, work, args.workers, pages="1-3")  # warm the page cache
            print("  text pages:    " + rate(run_processor(text_pdf, work, args.workers)))
            scanned = run_processor(scanned_pdf, work, args.workers, ocr_langs=langs)
            print(f"  scanned pages: {rate(scanned)}  [tesseract {'+'.join(langs)}]")
            print(f"                 {recall(LAST_MARKDOWN[0])}")
            if args.rapidocr:
                print(f"  rapidocr:      {rapidocr_run(scanned_pdf)}")
            print("\n(b) the same text PDF, other readers (one process each)")
            print("  pypdfium2 bare text:  " + rate(bare_pdfium(text_pdf)))
            if not args.no_pymupdf:
                res = pymupdf4llm_run(text_pdf)
                if isinstance(res, str):
                    print(f"  pymupdf4llm Markdown: {res}")
                else:
                    print("  pymupdf4llm Markdown: " + rate(res))
        if args.big:
            big = make_big_pdf(work, args.big, args.big_scanned)
            print(
                f"\n(c) {args.big}-page PDF, the last {args.big_scanned} scanned "
                f"({big.stat().st_size / 1e6:.1f} MB)"
            )
            with TreeRss() as rss:
                res = run_processor(big, work, args.workers, ocr_langs=langs)
            print("  lite engine:   " + rate(res))
            print(
                f"  peak RSS (worker + page processes): {rss.peak_kib / 1024:.0f} MiB "
                f"over {rss.peak_procs} processes"
            )
            parts = ", ".join(f"{name} {kib / 1024:.0f}" for name, kib in rss.peak_parts)
            print(f"  at the peak (MiB): {parts}")


if __name__ == "__main__":
    main()
