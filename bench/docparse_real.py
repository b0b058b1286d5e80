"""docparse on real documents: the lite engine beside pymupdf4llm, against poppler and the outline.

    python bench/docparse_real.py [--only DOC[,DOC…]] [--no-peer] [--pages N]
                                  [--workers N] [--out DIR] [--json FILE]

On the real-document corpus (tests/corpus/manifest.toml: papers, journal
articles, three-column pages, manuals, slides, Chinese documents, statistical
tables and scans; fetched into tests/corpus/cache/ first if missing), each
document's pages (the manifest's ``pages``; ``--pages N`` keeps the first N)
are read by:

- **lite**: ``DocparseProcessor.run`` as a worker runs it (local folder
  store, the page-process pool with ``--workers`` processes, Markdown +
  content list + images), ``engine: lite``, OCR ``eng`` (``eng,chi_sim``
  for Chinese documents); the pool is warmed on one page first;
- **pymupdf4llm** (AGPL, so never a dependency): installed by this script
  into a private venv under the temp dir (``python -m venv``, then
  ``pip install pymupdf4llm==2.0 pymupdf==2.0``) and run there, in one
  subprocess for every document (warmed on one page first), each document
  through ``pymupdf4llm.to_markdown(path, pages=…)``. ``--no-peer`` skips it.

Per document and engine, and overall (tests/corpus/measure.py defines each):

- **recall / precision**: token multisets of the Markdown vs ``pdftotext
  -layout`` of the same pages (for a scan: of the pages it was made from);
  NFKC, lower case, a CJK ideograph is a token, hyphenated line ends
  reconciled. Running headers and footers count: the lite engine leaves them
  out on purpose, so its recall pays for them. Margin line numbers of a
  document the manifest marks ``line_numbers`` do not (issue 16 asks that
  they be left out; ``measure.margin_numbers`` finds them in poppler's boxes);
- **order**: the share of anchors (token 3-grams unique in both texts) read
  in plain ``pdftotext``'s order (its longest increasing subsequence);
  1.0 = poppler's reading order; not scored on table-only documents;
- **headings found/expected/emitted**: outline entries pointing into the
  pages, matched by an emitted ``#`` heading (numbering stripped, same text
  or 85 % similar) / those entries / ``#`` lines emitted; "n/a" when the PDF
  has no outline;
- **tables emitted/visible**: pipe tables + HTML tables in the Markdown / the
  tables a person sees on those pages (the manifest's ``table_pages``);
- **1-word**: the share of paragraphs that are one token (under 20
  paragraphs, as a count, not judged: a table's page number is half of them);
- **ctrl**: control characters in the Markdown (Cc but tab/newline, and
  lone surrogates);
- **failed**: pages the lite engine lists in ``failed_pages``;
- **pages/s**: pages / seconds of the parse (lite: ``run`` end to end,
  including writing the outputs; pymupdf4llm: ``to_markdown``);
- **CPU**: seconds of CPU the parse took (lite: this process, its page
  processes and their tesseract runs, from /proc; pymupdf4llm: its process):
  on a machine shared with other jobs, pages per CPU-second move far less
  with the load than pages/s do, so both ratios are printed;
- **peak RSS**: lite: this process and its page processes (and their
  tesseract), summed, sampled every 20 ms (tests/rss.py); pymupdf4llm: its
  process's high-water mark (VmHWM, reset before each document).

Then the **Chinese scans** (lite): token recall (characters) of OCR on the
scanned copies against the text layer of the same pages, and the Chinese
lines of that text layer (``pdftotext -bbox-layout``) that OCR read as
Latin (the text blocks lying over the line are under 30 % CJK) or missed.

Each figure is printed next to issue 16's goal, and a cell that misses it is
marked ✗ (on both engines' rows; the goals are the lite engine's): recall
and precision ≥ 0.95; order ≥ 0.85 outside table-only documents; headings
found ≥ pymupdf4llm's; tables emitted ≤ visible + 1; one-word paragraphs
< 5 %; no control characters; no failed page; overall pages/s ≥ 5 ×
pymupdf4llm's; Chinese scans: recall ≥ 0.95 and no CJK line read as Latin.

``--out DIR`` keeps every Markdown (``DOC.lite.md``, ``DOC.pymupdf4llm.md``)
and content list; ``--json FILE`` writes the figures for comparing runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.corpus import Corpus, CorpusError, Document, ensure, load, measure, outline  # noqa: E402
from tests.rss import TreeRss  # noqa: E402

from conveyor.models import InputRef, Task  # noqa: E402
from conveyor.processors.base import ProcessorContext  # noqa: E402
from conveyor.processors.docparse import DocparseProcessor  # noqa: E402
from conveyor.storage.local import LocalBlobStore  # noqa: E402

PEER_VENV = Path(tempfile.gettempdir()) / "conveyor-bench-pymupdf4llm-venv"
PEER_PACKAGES = ["pymupdf4llm==2.0", "pymupdf==2.0"]
MISS = "✗"
GOAL_RECALL = GOAL_PRECISION = 0.95
GOAL_ORDER = 0.85
GOAL_ONE_WORD = 0.05
MIN_PARAGRAPHS = 20  # fewer: the one-word share is shown as a count and not judged
GOAL_SPEEDUP = 5.0

# pymupdf4llm in its own venv: every job in one process, one JSON line per document
PEER_CODE = r"""
import json, sys, time
import pymupdf, pymupdf4llm

def hwm_kib():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0

jobs = json.load(open(sys.argv[1]))
for job in jobs:
    try:
        with open("/proc/self/clear_refs", "w") as fh:  # restart the high-water mark
            fh.write("5")
    except OSError:
        pass
    res = {"id": job["id"]}
    t0 = time.perf_counter()
    c0 = time.process_time()
    try:
        md = pymupdf4llm.to_markdown(job["path"], pages=job["pages"], show_progress=False)
        res["secs"] = time.perf_counter() - t0
        res["cpu"] = time.process_time() - c0
        with open(job["out"], "w", encoding="utf-8", errors="surrogatepass") as fh:
            fh.write(md)
    except Exception as exc:
        res["error"] = f"{type(exc).__name__}: {exc}"
    res["rss_kib"] = hwm_kib()
    print("@@RESULT " + json.dumps(res), flush=True)
"""


@dataclass
class Settings:
    docparse_workers: int
    mineru_api_url: str = ""


@dataclass
class Result:
    engine: str
    pages: int = 0
    secs: float = 0.0
    rss_mib: float = 0.0
    cpu: float = 0.0  # CPU seconds of the parse
    error: str = ""
    matched: int = 0
    ref_tokens: int = 0
    out_tokens: int = 0
    order: float | None = None
    headings_found: int | None = None
    headings_expected: int = 0
    headings_emitted: int = 0
    tables: int = 0
    paragraphs: int = 0
    one_word: int = 0
    ctrl: int = 0
    failed_pages: list[int] = field(default_factory=list)
    cjk: dict[str, Any] | None = None

    @property
    def recall(self) -> float:
        return self.matched / self.ref_tokens if self.ref_tokens else 1.0

    @property
    def precision(self) -> float:
        return self.matched / self.out_tokens if self.out_tokens else 1.0

    @property
    def one_word_share(self) -> float:
        return self.one_word / self.paragraphs if self.paragraphs else 0.0


@dataclass
class Reference:
    layout: str
    order: str
    titles: list[str] | None  # None: no outline
    visible_tables: int
    margin_numbers: Counter[str]  # line numbers: not words of the reference


def pages_of(doc: Document, cap: int | None) -> tuple[int, ...]:
    return doc.pages[:cap] if cap else doc.pages


def reference(
    corpus: Corpus, doc: Document, files: dict[str, Path], pages: tuple[int, ...]
) -> Reference:
    if doc.scanned:
        src = corpus[doc.derived_from]
        src_pages = [doc.scan_pages[p - 1] for p in pages]
        path = files[src.id]
        titles = None
    else:
        src_pages = list(pages)
        path = files[doc.id]
        entries = outline(path)
        titles = [t for t, _, p in entries if p in pages] if entries else None
    return Reference(
        layout=measure.pdftotext(path, src_pages, layout=True),
        order=measure.pdftotext(path, src_pages),
        titles=titles,
        visible_tables=sum(1 for p in doc.table_pages if p in pages),
        margin_numbers=(measure.margin_numbers(path, src_pages) if doc.line_numbers else Counter()),
    )


def score(res: Result, md: str, ref: Reference) -> None:
    ws = measure.word_score(ref.layout, ref.order, md, ref.margin_numbers)
    res.matched, res.ref_tokens, res.out_tokens = ws.matched, ws.reference, ws.candidate
    res.order = measure.order_score(ref.order, md)
    b = measure.blocks(md)
    res.headings_emitted = len(b.headings)
    res.headings_found = (
        None if ref.titles is None else measure.headings_found(ref.titles, b.headings)
    )
    res.tables, res.paragraphs, res.one_word = b.tables, b.paragraphs, b.one_word
    res.ctrl = measure.control_chars(md)


def run_lite(
    doc: Document, path: Path, pages: tuple[int, ...], work: Path, workers: int
) -> tuple[Result, str, list[dict[str, Any]]]:
    store = LocalBlobStore(work / "buckets")
    key = f"bench/{doc.id}.pdf"
    store.put_file("input", key, path)
    task_dir = work / f"task-{uuid.uuid4().hex[:8]}"
    task_dir.mkdir()
    langs = ["eng", "chi_sim"] if doc.lang == "zh" else ["eng"]
    params: dict[str, Any] = {"engine": "lite", "ocr_langs": langs}
    if tuple(pages) != tuple(range(1, doc.page_count + 1)):
        params["pages"] = ",".join(f"{a}-{b}" for a, b in measure.runs(pages))
    proc = DocparseProcessor(Settings(docparse_workers=workers))
    params = proc.validate(params, InputRef(bucket="input", key=key))
    ctx = ProcessorContext(
        task=Task(kind="docparse", input=InputRef(bucket="input", key=key), params=params),
        workdir=task_dir,
        storage=store,
        output_bucket="output",
        report_progress=lambda p, ph, m: None,
        log=lambda line: None,
    )
    res = Result("lite", pages=len(pages))
    md, content = "", []
    with TreeRss() as rss:
        c0 = tree_cpu()
        t0 = time.perf_counter()
        try:
            outputs = proc.run(ctx)
        except Exception as exc:
            res.error = f"{type(exc).__name__}: {exc}"
            outputs = []
        res.secs = time.perf_counter() - t0
        res.cpu = tree_cpu() - c0
    res.rss_mib = rss.peak_kib / 1024
    for o in outputs:
        # staged, not published: the worker moves them to their final keys on completion
        with store.open(o.bucket, o.staged_key or o.key) as fh:
            data = fh.read()
        if o.name == "markdown":
            md = data.decode("utf-8")
            res.failed_pages = list(o.meta.get("failed_pages", []))
        elif o.name == "content_list":
            content = json.loads(data)
    shutil.rmtree(task_dir, ignore_errors=True)
    shutil.rmtree(work / "buckets", ignore_errors=True)
    return res, md, content


def peer_python() -> Path | str:
    """The private venv's python with pymupdf4llm, installed on first use; or why not."""
    py = PEER_VENV / "bin" / "python"
    check = [str(py), "-c", "import pymupdf4llm, pymupdf"]
    if py.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return py
    print(f"installing {' '.join(PEER_PACKAGES)} (AGPL, for this benchmark only) in {PEER_VENV} …")
    r = subprocess.run(
        [sys.executable, "-m", "venv", "--clear", str(PEER_VENV)], capture_output=True
    )
    if r.returncode == 0:
        r = subprocess.run(
            [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PEER_PACKAGES],
            capture_output=True,
        )
    if r.returncode != 0:
        return "install failed: " + r.stderr.decode(errors="replace").strip()[-300:]
    return py


def run_peer(
    jobs: list[tuple[Document, Path, tuple[int, ...]]], work: Path
) -> tuple[dict[str, Result], dict[str, str], str]:
    """Every job in one pymupdf4llm process; results, Markdown by document, and its version."""
    py = peer_python()
    if isinstance(py, str):
        return {}, {}, py
    version = subprocess.run(
        [
            str(py),
            "-c",
            "import pymupdf, pymupdf4llm; print(pymupdf.VersionBind, pymupdf4llm.version)",
        ],
        capture_output=True,
        text=True,
    ).stdout.strip()
    spec = []
    _, first_path, first_pages = jobs[0]
    warm = {"id": "_warm", "path": str(first_path), "pages": [first_pages[0] - 1]}
    spec.append({**warm, "out": str(work / "_warm.md")})
    for doc, path, pages in jobs:
        spec.append(
            {
                "id": doc.id,
                "path": str(path),
                "pages": [p - 1 for p in pages],
                "out": str(work / f"{doc.id}.peer.md"),
            }
        )
    (work / "peer-jobs.json").write_text(json.dumps(spec))
    proc = subprocess.Popen(
        [str(py), "-c", PEER_CODE, str(work / "peer-jobs.json")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    results: dict[str, Result] = {}
    mds: dict[str, str] = {}
    pages_by_id = {d.id: len(p) for d, _, p in jobs}
    for line in proc.stdout:
        if not line.startswith("@@RESULT "):
            continue
        r = json.loads(line[len("@@RESULT ") :])
        if r["id"] == "_warm":
            continue
        res = Result("pymupdf4llm", pages=pages_by_id[r["id"]], rss_mib=r["rss_kib"] / 1024)
        res.secs = r.get("secs", 0.0)
        res.cpu = r.get("cpu", 0.0)
        res.error = r.get("error", "")
        results[r["id"]] = res
        out = work / f"{r['id']}.peer.md"
        if out.exists():
            mds[r["id"]] = out.read_text(encoding="utf-8", errors="replace")
        print(f"  pymupdf4llm {r['id']}: {res.secs:.1f} s", flush=True)
    proc.wait()
    return results, mds, version


def mark(ok: bool) -> str:
    return "" if ok else MISS


def fmt_row(
    doc_id: str, res: Result, doc: Document, peer: Result | None, visible: int, has_outline: bool
) -> str:
    if res.error and not res.pages:
        return f"{doc_id:19} {res.engine:11} failed: {res.error}"
    rec = f"{res.recall:.3f}{mark(res.recall >= GOAL_RECALL)}"
    prec = f"{res.precision:.3f}{mark(res.precision >= GOAL_PRECISION)}"
    if doc.table_only or res.order is None:
        order = "  -"
    else:
        order = f"{res.order:.3f}{mark(res.order >= GOAL_ORDER)}"
    if has_outline and res.headings_found is not None:
        expected = res.headings_expected
        ok = (
            peer is None or peer.headings_found is None or res.headings_found >= peer.headings_found
        )
        heads = f"{res.headings_found}/{expected}/{res.headings_emitted}{mark(ok)}"
    else:
        heads = f"n/a/{res.headings_emitted}"
    tables = f"{res.tables}/{visible}{mark(res.tables <= visible + 1)}"
    if res.paragraphs >= MIN_PARAGRAPHS:
        one = f"{100 * res.one_word_share:.1f}%{mark(res.one_word_share < GOAL_ONE_WORD)}"
    else:  # too few paragraphs to judge (a table and its page number)
        one = f"{res.one_word}/{res.paragraphs}"
    ctrl = f"{res.ctrl}{mark(res.ctrl == 0)}"
    failed = f"{len(res.failed_pages)}{mark(not res.failed_pages)}" if res.engine == "lite" else "-"
    rate = res.pages / res.secs if res.secs else 0.0
    err = f"  ({res.error})" if res.error else ""
    return (
        f"{doc_id:19} {res.engine:11} {res.pages:5} {rec:>7} {prec:>7} {order:>7} "
        f"{heads:>13} {tables:>7} {one:>7} {ctrl:>5} {failed:>6} {rate:8.1f} "
        f"{res.rss_mib:7.0f}{err}"
    )


HEADER = (
    f"{'document':19} {'engine':11} {'pages':>5} {'recall':>7} {'prec.':>7} {'order':>7} "
    f"{'head f/e/emit':>13} {'tables':>7} {'1-word':>7} {'ctrl':>5} {'failed':>6} "
    f"{'pages/s':>8} {'RSS MiB':>7}"
)
GOALS = (
    "goals (issue 16, the lite engine on every document): recall ≥ 0.95, precision ≥ 0.95, "
    "order ≥ 0.85 (not table-only),\n  headings found ≥ pymupdf4llm's, tables emitted ≤ visible "
    "+ 1, one-word paragraphs < 5 %, no control character, no failed page;\n  overall pages/s "
    "≥ 5 × pymupdf4llm's; Chinese scans: recall ≥ 0.95, no CJK line read as Latin.  ✗ = misses"
)


def overall(rows: list[tuple[Document, Result]]) -> Result:
    tot = Result(rows[0][1].engine if rows else "")
    orders = []
    for doc, r in rows:
        tot.pages += r.pages
        tot.secs += r.secs
        tot.rss_mib = max(tot.rss_mib, r.rss_mib)
        tot.matched += r.matched
        tot.ref_tokens += r.ref_tokens
        tot.out_tokens += r.out_tokens
        tot.headings_emitted += r.headings_emitted
        tot.tables += r.tables
        tot.paragraphs += r.paragraphs
        tot.one_word += r.one_word
        tot.ctrl += r.ctrl
        tot.failed_pages += r.failed_pages
        if r.order is not None and not doc.table_only:
            orders.append(r.order)
        if r.headings_found is not None:
            tot.headings_found = (tot.headings_found or 0) + r.headings_found
    tot.order = sum(orders) / len(orders) if orders else None
    return tot


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", action="append", help="these documents (ids, comma-separated)")
    ap.add_argument("--no-peer", action="store_true", help="skip pymupdf4llm")
    ap.add_argument("--pages", type=int, default=0, help="at most N pages of each document")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="lite page processes")
    ap.add_argument("--out", type=Path, help="keep every Markdown and content list here")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()

    corpus = load()
    ids = [i for spec in args.only or [] for i in spec.split(",") if i] or [d.id for d in corpus]
    try:
        docs = [corpus[i] for i in ids]
        files = ensure(ids + [d.derived_from for d in docs if d.scanned], corpus=corpus, log=print)
    except CorpusError as exc:
        print(f"docparse_real: {exc}", file=sys.stderr)
        return 1
    cap = args.pages or None
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    load_avg = os.getloadavg()[0]
    print(
        f"CPU cores: {os.cpu_count()}, lite page processes: {args.workers}, "
        f"load average {load_avg:.1f}, {len(docs)} documents"
    )

    lite: dict[str, Result] = {}
    refs: dict[str, Reference] = {}
    contents: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="docparse-real-") as tmp:
        work = Path(tmp)
        print("\nlite engine (warming the page processes) …", flush=True)
        run_lite(docs[0], files[docs[0].id], pages_of(docs[0], 1), work, args.workers)
        for doc in docs:
            pages = pages_of(doc, cap)
            refs[doc.id] = reference(corpus, doc, files, pages)
            res, md, content = run_lite(doc, files[doc.id], pages, work, args.workers)
            score(res, md, refs[doc.id])
            res.headings_expected = len(refs[doc.id].titles or [])
            lite[doc.id] = res
            contents[doc.id] = content
            if args.out:
                (args.out / f"{doc.id}.lite.md").write_text(md, encoding="utf-8")
                (args.out / f"{doc.id}.lite_content_list.json").write_text(
                    json.dumps(content, ensure_ascii=False, indent=1), encoding="utf-8"
                )
            if doc.scanned and doc.lang == "zh":
                src = corpus[doc.derived_from]
                res.cjk = chinese_scan(doc, files[src.id], pages, content)
            print(f"  lite {doc.id}: {res.pages} pages in {res.secs:.1f} s", flush=True)

        print(f"  (load average {os.getloadavg()[0]:.1f})", flush=True)
        peer: dict[str, Result] = {}
        version = ""
        if not args.no_peer:
            print("\npymupdf4llm …", flush=True)
            jobs = [(d, files[d.id], pages_of(d, cap)) for d in docs]
            peer, mds, version = run_peer(jobs, work)
            print(f"  (load average {os.getloadavg()[0]:.1f})", flush=True)
            if not peer and version:
                print(f"  pymupdf4llm: {version}")
            for doc_id, res in peer.items():
                score(res, mds.get(doc_id, ""), refs[doc_id])
                res.headings_expected = len(refs[doc_id].titles or [])
                if args.out and doc_id in mds:
                    (args.out / f"{doc_id}.pymupdf4llm.md").write_text(
                        mds[doc_id], encoding="utf-8"
                    )

    print(f"\n{GOALS}")
    if version:
        print(f"pymupdf4llm: PyMuPDF / pymupdf4llm {version}")
    print(f"\n{HEADER}")
    for doc in docs:
        ref = refs[doc.id]
        has_outline = ref.titles is not None
        p = peer.get(doc.id)
        print(fmt_row(doc.id, lite[doc.id], doc, p, ref.visible_tables, has_outline))
        if p is not None:
            print(fmt_row("", p, doc, None, ref.visible_tables, has_outline))
    lite_all = overall([(d, lite[d.id]) for d in docs])
    visible = sum(r.visible_tables for r in refs.values())
    print("-" * len(HEADER))
    print(summary("overall", lite_all, visible, docs, lite))
    if peer:
        peer_all = overall([(d, peer[d.id]) for d in docs if d.id in peer])
        print(summary("", peer_all, visible, docs, peer))
        print()
        for label, chosen in (
            ("overall", docs),
            ("text-layer documents", [d for d in docs if not d.scanned]),
            ("scans (OCR)", [d for d in docs if d.scanned]),
        ):
            both = [d for d in chosen if d.id in peer]
            if not both:
                continue
            lr = rate_of(lite, both)
            pr = rate_of(peer, both)
            ratio = lr / pr if pr else 0.0
            print(
                f"speed, {label}: lite {lr:.2f} pages/s, pymupdf4llm {pr:.2f} pages/s: "
                f"{ratio:.1f}× (goal ≥ {GOAL_SPEEDUP:.0f}×){mark(ratio >= GOAL_SPEEDUP)}"
            )
            lc, pc = cpu_rate_of(lite, both), cpu_rate_of(peer, both)
            if lc and pc:
                print(
                    f"  CPU, {label}: lite {lc:.2f} pages per CPU-second, pymupdf4llm "
                    f"{pc:.2f}: {lc / pc:.1f}×"
                )
        wins = [
            d.id
            for d in docs
            if d.id in peer
            and lite[d.id].headings_found is not None
            and peer[d.id].headings_found is not None
            and (lite[d.id].headings_found or 0) < (peer[d.id].headings_found or 0)
        ]
        if wins:
            print(f"headings: pymupdf4llm finds more on {', '.join(wins)}")
    misses = count_misses(docs, lite, peer, refs)
    print(f"lite misses: {sum(misses.values())} cells on {len(misses)} of {len(docs)} documents")

    zh = [d for d in docs if lite[d.id].cjk is not None]
    if zh:
        print(
            "\nChinese scans (lite, tesseract eng+chi_sim) against the text layer of the same "
            "pages\n  goals: recall ≥ 0.95, no CJK line read as Latin"
        )
        for d in zh:
            c = lite[d.id].cjk or {}
            rec = c["recall"]
            print(
                f"  {d.id:19} recall {rec:.3f}{mark(rec >= GOAL_RECALL)} "
                f"({c['hits']}/{c['ref']}; CJK characters {c['cjk_recall']:.3f}, "
                f"other words {c['latin_recall']:.3f}); Chinese lines {c['lines']}: "
                f"read as Latin {c['as_latin']}{mark(c['as_latin'] == 0)}, missed {c['missed']}"
            )
            for ex in c["examples"]:
                print(f"      {ex}")

    if args.json:
        out = {
            "docs": {
                d.id: {
                    "lite": asdict(lite[d.id]),
                    "pymupdf4llm": asdict(peer[d.id]) if d.id in peer else None,
                    "visible_tables": refs[d.id].visible_tables,
                    "outline": None if refs[d.id].titles is None else len(refs[d.id].titles or []),
                }
                for d in docs
            }
        }
        args.json.write_text(json.dumps(out, indent=1, ensure_ascii=False))
    return 0


def tree_cpu() -> float:
    """CPU seconds of this process and every process under it, with the children they
    have reaped (a page process's finished tesseract runs), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    todo, seen = [os.getpid()], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except (OSError, ValueError):
            continue
    return total / tick


def cpu_rate_of(results: dict[str, Result], docs: list[Document]) -> float:
    pages = sum(results[d.id].pages for d in docs)
    cpu = sum(results[d.id].cpu for d in docs)
    return pages / cpu if cpu else 0.0


def rate_of(results: dict[str, Result], docs: list[Document]) -> float:
    pages = sum(results[d.id].pages for d in docs)
    secs = sum(results[d.id].secs for d in docs)
    return pages / secs if secs else 0.0


def summary(
    label: str, r: Result, visible: int, docs: list[Document], per: dict[str, Result]
) -> str:
    rate = r.pages / r.secs if r.secs else 0.0
    order = f"{r.order:.3f}" if r.order is not None else "-"
    expected = sum(per[d.id].headings_expected for d in docs if d.id in per)
    heads = f"{r.headings_found or 0}/{expected}/{r.headings_emitted}"
    failed = str(len(r.failed_pages)) if r.engine == "lite" else "-"
    return (
        f"{label:19} {r.engine:11} {r.pages:5} {r.recall:7.3f} {r.precision:7.3f} {order:>7} "
        f"{heads:>13} {f'{r.tables}/{visible}':>7} {f'{100 * r.one_word_share:.1f}%':>7} "
        f"{r.ctrl:>5} {failed:>6} {rate:8.1f} {r.rss_mib:7.0f}"
    )


def count_misses(
    docs: list[Document],
    lite: dict[str, Result],
    peer: dict[str, Result],
    refs: dict[str, Reference],
) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in docs:
        r, ref = lite[d.id], refs[d.id]
        p = peer.get(d.id)
        n = sum(
            [
                r.recall < GOAL_RECALL,
                r.precision < GOAL_PRECISION,
                not d.table_only and r.order is not None and r.order < GOAL_ORDER,
                p is not None
                and r.headings_found is not None
                and p.headings_found is not None
                and r.headings_found < p.headings_found,
                r.tables > ref.visible_tables + 1,
                r.paragraphs >= MIN_PARAGRAPHS and r.one_word_share >= GOAL_ONE_WORD,
                r.ctrl > 0,
                bool(r.failed_pages),
            ]
        )
        if n:
            out[d.id] = n
    return out


def chinese_scan(
    doc: Document, source: Path, pages: tuple[int, ...], content: list[dict[str, Any]]
) -> dict[str, Any]:
    """OCR of a Chinese scan against the text layer of the pages it was made from."""
    src_pages = [doc.scan_pages[p - 1] for p in pages]
    ref_text = measure.pdftotext(source, src_pages, layout=True)
    ocr_text = "\n".join(str(i.get("text", "")) for i in content)
    ref = measure.tokens(ref_text)
    got = measure.tokens(ocr_text)
    rc, gc = Counter(ref), Counter(got)
    hits = sum(min(n, gc[t]) for t, n in rc.items())
    cjk = {t: n for t, n in rc.items() if measure.CJK_CHAR.fullmatch(t)}
    other = {t: n for t, n in rc.items() if t not in cjk}
    cjk_hits = sum(min(n, gc[t]) for t, n in cjk.items())
    other_hits = sum(min(n, gc[t]) for t, n in other.items())
    lines = as_latin = missed = 0
    examples: list[str] = []
    for i, p in enumerate(pages):
        items = [
            (tuple(it["bbox"]), str(it.get("text", "")))
            for it in content
            if it.get("page_idx") == p - 1 and it.get("bbox") and it.get("text")
        ]
        res = measure.cjk_lines_read_as_latin(measure.page_lines(source, src_pages[i]), items)  # type: ignore[arg-type]
        lines += res.lines
        as_latin += res.as_latin
        missed += res.missed
        examples += res.examples
    return {
        "recall": hits / len(ref) if ref else 1.0,
        "hits": hits,
        "ref": len(ref),
        "cjk_recall": cjk_hits / sum(cjk.values()) if cjk else 1.0,
        "latin_recall": other_hits / sum(other.values()) if other else 1.0,
        "lines": lines,
        "as_latin": as_latin,
        "missed": missed,
        "examples": examples[:3],
    }


if __name__ == "__main__":
    sys.exit(main())
