"""Real documents nobody here wrote, through the real processor (issue 16's regression tests).

The documents are the corpus of tests/corpus/manifest.toml (papers, journal
articles, three-column pages, manuals, slides, Chinese documents, statistical
tables, scans), fetched by ``make test`` (scripts/fetch_corpus.py) into
tests/corpus/cache/. A test fetches what it needs if it is missing; a test
that cannot get its documents fails in CI and is skipped elsewhere.

Each document is parsed once per session (a page subset: the file stays under
two minutes) through ``DocparseProcessor.run`` and its published outputs, as
the Harness does for the generated PDFs, and measured against poppler's text
of the same pages with tests/corpus/measure.py, as bench/docparse_real.py
does. These tests pin what already works; the parser's fixes add theirs
(``parsed(doc_id, pages)`` and the measures are the tools).
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from conveyor.storage.local import LocalBlobStore
from tests.conftest import IN_CI, need_tool
from tests.corpus import Corpus, CorpusError, Document, ensure, load, measure, outline, parse_pages
from tests.integration.docparse.conftest import Harness, Recorder, Settings

CORPUS = load()

# the pages each document is parsed on here: its first pages and the ones that
# show what it is there for (the bench reads the manifest's whole page ranges)
SUBSETS: dict[str, str] = {
    "acm-sigconf": "1-3",
    "revtex-aps": "1-2,4-5",
    "naacl06": "1-2,7-8",
    "aas-sample631": "1-2,6-7,16",
    "asme-journal": "1-4",
    "irs-i1040nr": "5-7",
    "octave-refcard": "1",
    "irs-tax-table": "35",
    "census-12s0324": "1",
    "tabula-data": "1-3",
    "gnuplot-manual": "1-2,32-34",
    "liboctave-manual": "3-4,54-55",
    "dmca-report": "1-3",
    "beamer-talk": "1-6",
    "ctex-faq": "5-7,24",
    "zhlipsum": "1-4",
    "texlive-zh-cn": "4-5",
    "vicksburg-ocr": "1-2",
    "scan-naacl06": "1",
    "scan-census": "1",
    "scan-zhlipsum": "1",
}


@dataclass
class Parsed:
    doc: Document
    pages: tuple[int, ...]
    markdown: str
    content: list[dict[str, Any]]
    failed_pages: list[int]
    logs: list[str]

    def reference(self, *, layout: bool) -> str:
        """poppler's text of the same pages (a scan: of the pages it was made from)."""
        if self.doc.scanned:
            src = CORPUS[self.doc.derived_from]
            return measure.pdftotext(
                src.file(), [self.doc.scan_pages[p - 1] for p in self.pages], layout=layout
            )
        return measure.pdftotext(self.doc.file(), self.pages, layout=layout)

    def words(self) -> measure.WordScore:
        return measure.word_score(
            self.reference(layout=True), self.reference(layout=False), self.markdown
        )

    def order(self) -> float | None:
        return measure.order_score(self.reference(layout=False), self.markdown)


def _have(ids: list[str]) -> None:
    try:
        ensure(ids, corpus=CORPUS, log=lambda line: None)
    except CorpusError as exc:
        msg = f"the real-document corpus is not to be had (make corpus): {exc}"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(scope="session")
def parsed(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Parsed]:
    """``parsed(doc_id, pages=None)``: the document parsed by the lite engine, once a session."""
    need_tool("pdftotext")
    root = tmp_path_factory.mktemp("real-corpus")
    harness = Harness(root=root, store=LocalBlobStore(root / "buckets"))
    done: dict[tuple[str, str], Parsed] = {}

    def parse(doc_id: str, pages: str | None = None) -> Parsed:
        doc = CORPUS[doc_id]
        spec = pages or SUBSETS.get(doc_id) or doc.range_label()
        if (doc_id, spec) in done:
            return done[(doc_id, spec)]
        _have([doc_id, *([doc.derived_from] if doc.scanned else [])])
        if doc.scanned:
            need_tool("tesseract")
        langs = ["eng", "chi_sim"] if doc.lang == "zh" else ["eng"]
        rec = Recorder()
        outputs = harness.run(
            doc.file(),
            key=f"corpus/{uuid.uuid4().hex[:8]}/{doc_id}.pdf",
            settings=Settings(docparse_workers=2),
            recorder=rec,
            engine="lite",
            ocr_langs=langs,
            pages=spec,
        )
        md_out = harness.output(outputs, "markdown")
        result = Parsed(
            doc=doc,
            pages=parse_pages(spec, doc.page_count),
            markdown=harness.markdown(outputs),
            content=harness.content_list(outputs),
            failed_pages=list(md_out.meta.get("failed_pages", [])),
            logs=rec.logs,
        )
        done[(doc_id, spec)] = result
        return result

    return parse


def _text_of(content: list[dict[str, Any]]) -> str:
    return json.dumps(content, ensure_ascii=False)


# -- the corpus itself --------------------------------------------------------------------


def test_manifest_records_provenance_licence_and_what_is_visible() -> None:
    corpus: Corpus = load()
    assert len(corpus.documents) >= 20
    categories = " ".join(d.category for d in corpus)
    for word in ("two-column", "journal", "three-column", "manual", "slide", "Chinese", "table"):
        assert word in categories, word
    scans = [d for d in corpus if d.scanned]
    assert any(d.lang == "zh" for d in scans) and any(d.lang == "en" for d in scans)
    for doc in corpus:
        assert doc.licence and doc.category and doc.page_count > 0, doc.id
        assert len(doc.sha256) == 64, doc.id
        assert all(1 <= p <= doc.page_count for p in doc.pages), doc.id
        if not doc.scanned:
            src = corpus.sources[doc.source]
            assert src.kind in ("apt", "pypi") and src.version, doc.id
    assert set(SUBSETS) <= set(corpus.documents)


# -- every document -----------------------------------------------------------------------


@pytest.mark.parametrize("doc_id", list(SUBSETS))
def test_document_parses_with_no_failed_page_and_no_control_character(
    parsed: Callable[..., Parsed], doc_id: str
) -> None:
    got = parsed(doc_id)
    assert got.failed_pages == [], got.logs
    assert got.markdown.strip()
    assert measure.control_chars(got.markdown) == 0
    assert measure.control_chars(_text_of(got.content)) == 0
    assert {i.get("page_idx") for i in got.content} <= {p - 1 for p in got.pages}


# beamer-talk: its navigation bar (a quarter of a slide's words) is on every slide and
# is left out as a running header, on purpose
WORDS_KEPT = [d for d in SUBSETS if not CORPUS[d].scanned and d != "beamer-talk"]


@pytest.mark.parametrize("doc_id", WORDS_KEPT)
def test_text_layer_words_are_kept(parsed: Callable[..., Parsed], doc_id: str) -> None:
    """At least 90 % of poppler's words (running headers included), and few words made up."""
    words = parsed(doc_id).words()
    assert words.recall >= 0.90, (words.recall, words.matched, words.reference)
    assert words.precision >= 0.90, (words.precision, words.matched, words.candidate)


# -- what the findings of issue 16 were about, where it already works -----------------------


def test_math_letters_above_the_bmp_come_out_whole(parsed: Callable[..., Parsed]) -> None:
    """ASME's template sets mathematical italic letters (U+1D44E …): surrogate pairs joined."""
    got = parsed("asme-journal")
    math = [c for c in got.markdown if 0x1D400 <= ord(c) <= 0x1D7FF]
    assert len(math) >= 20
    for text in (got.markdown, _text_of(got.content)):
        assert not any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def test_two_column_paper_is_read_column_by_column(parsed: Callable[..., Parsed]) -> None:
    order = parsed("naacl06", "1-2").order()
    assert order is not None and order >= 0.9


def test_chinese_text_layer_keeps_its_characters(parsed: Callable[..., Parsed]) -> None:
    got = parsed("ctex-faq", "6-7")
    ref = [t for t in measure.tokens(got.reference(layout=True)) if measure.CJK_CHAR.fullmatch(t)]
    out = set(measure.tokens(got.markdown))
    assert len(ref) > 500
    assert sum(1 for t in ref if t in out) / len(ref) >= 0.99
    order = got.order()
    assert order is not None and order >= 0.9


def test_chinese_scan_is_read_as_chinese(parsed: Callable[..., Parsed]) -> None:
    """OCR (eng+chi_sim) of a scanned page against the text layer of the page it was made from."""
    got = parsed("scan-zhlipsum")
    ref = [t for t in measure.tokens(got.reference(layout=True)) if measure.CJK_CHAR.fullmatch(t)]
    have = Counter(measure.tokens("\n".join(str(i.get("text", "")) for i in got.content)))
    hits = sum(min(n, have[t]) for t, n in Counter(ref).items())
    assert len(ref) > 800
    assert hits / len(ref) >= 0.9


def test_english_scan_of_a_two_column_paper(parsed: Callable[..., Parsed]) -> None:
    words = parsed("scan-naacl06").words()
    assert words.recall >= 0.9 and words.precision >= 0.9


def test_no_page_sized_table_on_slides(parsed: Callable[..., Parsed]) -> None:
    """A beamer theme's frame rectangles are not a table (issue 16, finding 3)."""
    got = parsed("beamer-talk")
    assert measure.blocks(got.markdown).tables == 0
    assert not [i for i in got.content if i["type"] == "table"]


@pytest.mark.parametrize(
    ("doc_id", "pages"),
    [("aas-sample631", "1-19"), ("liboctave-manual", "1-57"), ("texlive-zh-cn", "1-8")],
)
def test_outline_headings_are_found(parsed: Callable[..., Parsed], doc_id: str, pages: str) -> None:
    """Small-caps AAS sections, Texinfo chapters and Chinese sections: 90 % of the outline."""
    got = parsed(doc_id, pages)
    titles = [t for t, _, p in outline(got.doc.file()) if p in got.pages]
    emitted = measure.blocks(got.markdown).headings
    assert len(titles) >= 15
    assert measure.headings_found(titles, emitted) >= 0.9 * len(titles), emitted
