"""The ``docparse`` kind: a PDF (or a scanned image) to Markdown, a content list and images.

MinerU, run on GPU workers, is the usual tool for this.  Here the default ``lite``
engine does it on any CPU, offline, from permissive libraries (PDFium for
text and images, tesseract for scanned pages); the ``mineru`` engine hands
the document to MinerU where a worker has it.  Both write the same files:

    <prefix>/<name>.md
    <prefix>/<name>_content_list.json     (MinerU's content-list shape)
    <prefix>/images/<sha256>.jpg

The order of ``run`` mirrors transcode's: reject a bad input before any
work, parse, and publish everything or nothing.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, ClassVar

from conveyor.errors import InputRejected, ProcessorError, TaskCancelled
from conveyor.models import InputRef, OutputFile, Task
from conveyor.processors.base import (
    Choice,
    FormField,
    KindForm,
    Processor,
    ProcessorContext,
    download_input,
    publishing,
)
from conveyor.processors.docparse.assemble import assemble
from conveyor.processors.docparse.inputs import DocInfo
from conveyor.processors.docparse.limits import DocLimits
from conveyor.processors.docparse.lite import LiteSummary, PagePoolBroken, open_document, run_pages
from conveyor.processors.docparse.mineru import (
    MineruError,
    MineruResult,
    mineru_mode,
    parse_http,
    parse_inprocess,
)
from conveyor.processors.docparse.ocr import OcrUnavailable, check_languages, tesseract_languages
from conveyor.processors.docparse.params import DEFAULT_LANGS, DocparseParams
from conveyor.processors.docparse.settings import DocparseSettings
from conveyor.storage.base import validate_key

from .labels import LABELS

if TYPE_CHECKING:
    from prometheus_client.core import Metric

log = logging.getLogger(__name__)

_CONTENT_TYPES = {".md": "text/markdown; charset=utf-8", ".json": "application/json"}
SPEED_SAMPLE = 20  # recent completed tasks in conveyor_docparse_pages_per_second


class DocparseProcessor(Processor):
    """Settings (``DocparseSettings``, all optional): ``docparse_workers`` (page
    processes, 0 = CPU count), the limits on input and ``mineru_api_url``;
    ``MINERU_API_URL`` in the environment works too.
    """

    kind = "docparse"
    params_model = DocparseParams
    settings_model = DocparseSettings
    config: DocparseSettings
    # a PDF, or a scan as an image; an upload is queued only for a PDF (an image in an
    # input bucket is more often a photo, or a transcode's thumbnail, than a scan)
    suffixes = frozenset({".pdf", ".png", ".jpg", ".jpeg", ".tif", ".tiff"})
    content_types = frozenset({"application/pdf", "image/png", "image/jpeg", "image/tiff"})
    upload_suffixes = frozenset({".pdf"})
    labels: ClassVar[dict[str, dict[str, str]]] = LABELS

    def __init__(self, settings: Any = None) -> None:
        super().__init__(settings)
        self.workers = int(self.config.workers or 0) or (os.cpu_count() or 1)
        self.mineru_api_url: str = self.config.mineru_api_url or os.environ.get(
            "MINERU_API_URL", ""
        )
        self.limits = DocLimits.from_settings(self.config)  # docs/docparse.md, "Limits on input"

    # -- submit time -----------------------------------------------------------------
    def validate(self, params: dict[str, Any], input_ref: InputRef | None) -> dict[str, Any]:
        normalised = super().validate(params, input_ref)
        if normalised.get("output_prefix"):
            validate_key(normalised["output_prefix"])
        return normalised

    # -- faces -----------------------------------------------------------------------
    def form(self) -> KindForm:
        def choices(field: str, *values: str) -> tuple[Choice, ...]:
            return tuple(Choice(v, f"docparse.{field}_{v}", v) for v in values)

        fields = (
            FormField(
                "dp_engine",
                "engine",
                "select",
                "docparse.engine",
                choices("engine", "auto", "lite", "mineru"),
                default="auto",
                inline=True,
            ),
            FormField(
                "dp_ocr",
                "ocr",
                "select",
                "docparse.ocr",
                choices("ocr", "auto", "force", "off"),
                default="auto",
                inline=True,
            ),
            FormField(
                "dp_langs",
                "ocr_langs",
                "checkboxes",
                "docparse.langs",
                choices("lang", *DEFAULT_LANGS),
                default=tuple(DEFAULT_LANGS),
            ),
            FormField(
                "dp_formats",
                "formats",
                "checkboxes",
                "docparse.formats",
                choices("format", "markdown", "content_list"),
                default=("markdown", "content_list"),
            ),
            FormField(
                "dp_pages",
                "pages",
                "text",
                "docparse.pages",
                placeholder="docparse.pages_placeholder",
            ),
        )
        return KindForm(legend="docparse.form", fields=fields, hint="docparse.hint")

    def gauges(self, recent: Callable[[int], list[Task]]) -> list[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        pages = GaugeMetricFamily(
            "conveyor_docparse_pages_per_second",
            f"Pages per second of run time over the last {SPEED_SAMPLE} docparse tasks",
        )
        value = pages_per_second(recent(SPEED_SAMPLE))
        if value is not None:
            pages.add_metric([], value)
        return [pages]

    # -- worker start ----------------------------------------------------------------
    def probe(self) -> dict[str, Any] | None:
        """Always runnable (text layers need nothing else); says what OCR and MinerU it has."""
        mode = mineru_mode(self.mineru_api_url)
        return {
            "engines": ["lite", "mineru"] if mode else ["lite"],
            "mineru": mode,
            "ocr": "tesseract" if tesseract_languages() else None,
            "ocr_langs": list(tesseract_languages()),
            "page_workers": self.workers,
        }

    # -- one task --------------------------------------------------------------------
    def run(self, ctx: ProcessorContext) -> list[OutputFile]:
        started = time.monotonic()
        params = self._params(ctx)
        if ctx.task.input is None:
            raise InputRejected("a docparse task needs an input document (bucket and key)")
        ref = ctx.task.input
        ctx.report_progress(0.0, "download", f"downloading {ref.bucket}/{ref.key}")
        src = self._download(ctx, ref)
        _check_cancel(ctx)
        ctx.report_progress(3.0, "probe", "checking the document")
        # the input is decoded and opened in a page process, never in this one
        scan_check = params.engine == "auto" and mineru_mode(self.mineru_api_url) is not None
        try:
            doc, pages = open_document(
                src,
                ctx.workdir,
                params.pages,
                limits=self.limits,
                workers=self.workers,
                cancel=ctx.cancel_event,
                scan_check=scan_check,
            )
        except PagePoolBroken as exc:
            raise ProcessorError(str(exc), retryable=True) from exc
        base = _base_name(ref.key)
        outdir = ctx.workdir / "out"
        (outdir / "images").mkdir(parents=True)
        ctx.log(
            f"Docparse started: {ref.bucket}/{ref.key} ({doc.kind}, {doc.page_count} page(s), "
            f"{len(pages)} selected) engine={params.engine} ocr={params.ocr} "
            f"langs={'+'.join(params.ocr_langs)}"
        )
        engine_used, failed = self._parse(ctx, params, doc, pages, outdir, base)
        elapsed = time.monotonic() - started
        ctx.log(
            f"Docparse completed: {len(pages)} page(s) in {elapsed:.2f} s "
            f"({len(pages) / elapsed if elapsed else 0:.2f} pages/s) with {engine_used}"
        )
        prefix = params.output_prefix or _default_prefix(ref.key)
        outputs = self._publish(ctx, outdir, prefix, params, len(pages), engine_used, failed)
        ctx.report_progress(100.0, "upload", f"{len(outputs)} output(s) published")
        return outputs

    def _params(self, ctx: ProcessorContext) -> DocparseParams:
        try:
            return DocparseParams.model_validate(ctx.task.params)
        except ValueError as exc:
            raise ProcessorError(
                f"invalid docparse parameters: {exc}", retryable=False, code="invalid_params"
            ) from exc

    def _download(self, ctx: ProcessorContext, ref: InputRef) -> Path:
        dest = ctx.workdir / "input.bin"
        return download_input(ctx, ref, dest)

    def _parse(
        self,
        ctx: ProcessorContext,
        params: DocparseParams,
        doc: DocInfo,
        pages: list[int],
        outdir: Path,
        base: str,
    ) -> tuple[str, list[int]]:
        """Run the chosen engine (``auto`` tries MinerU for scanned input and falls back);
        the engine that ran, and the pages it could not parse (1-based)."""
        mode = mineru_mode(self.mineru_api_url)
        if params.engine == "mineru" and mode is None:
            raise ProcessorError(
                "engine mineru was asked for, but this worker has neither the mineru package "
                "nor MINERU_API_URL; use engine auto or lite",
                retryable=False,
                code="engine_unavailable",
            )
        want_mineru = params.engine == "mineru" or (
            params.engine == "auto"
            and mode is not None
            and (params.ocr == "force" or doc.kind != "pdf" or doc.has_scans)
        )
        if want_mineru and mode is not None:
            try:
                res = self._mineru(ctx, params, doc, pages, outdir, base, mode)
                ctx.log(f"MinerU ({res.engine}) parsed the document: {res.images} image(s)")
                return res.engine, []
            except MineruError as exc:
                if params.engine == "mineru":
                    raise ProcessorError(str(exc), retryable=True, code="mineru_failed") from exc
                ctx.log(f"MinerU failed ({exc}); falling back to the lite engine")
                for p in outdir.glob("*"):
                    if p.is_file():
                        p.unlink()
        summary = self._lite(ctx, params, doc, pages, outdir, base)
        return "lite", summary.failed

    def _mineru(
        self,
        ctx: ProcessorContext,
        params: DocparseParams,
        doc: DocInfo,
        pages: list[int],
        outdir: Path,
        base: str,
        mode: str,
    ) -> MineruResult:
        first, last = pages[0], pages[-1]
        if len(pages) != last - first + 1:
            ctx.log(f"MinerU takes one page span: parsing pages {first + 1}-{last + 1}")
        ctx.report_progress(5.0, "parse", "parsing with MinerU")
        timeout = ctx.timeout_s or 6 * 3600.0
        if mode == "http":
            res = parse_http(
                self.mineru_api_url,
                doc.path,
                outdir,
                base,
                first_page=first,
                last_page=last,
                langs=params.ocr_langs,
                ocr=params.ocr,
                cancel=ctx.cancel_event,
                timeout_s=timeout,
            )
        else:
            res = parse_inprocess(
                doc.path,
                outdir,
                base,
                first_page=first,
                last_page=last,
                langs=params.ocr_langs,
                ocr=params.ocr,
                workdir=ctx.workdir,
            )
        if not res.pages:
            res.pages = len(pages)
        return res

    def _lite(
        self,
        ctx: ProcessorContext,
        params: DocparseParams,
        doc: DocInfo,
        pages: list[int],
        outdir: Path,
        base: str,
    ) -> LiteSummary:
        if params.ocr == "force" or doc.kind != "pdf":
            self._need_ocr(params)
        langs = tuple(params.ocr_langs)
        total = len(pages)
        ctx.report_progress(5.0, "parse", f"parsing {total} page(s)")

        def on_page(done: int, total: int, result: dict[str, Any]) -> None:
            if result.get("error"):
                ctx.log(f"page {result['page_idx'] + 1}: could not be parsed: {result['error']}")
            ctx.report_progress(
                5.0 + 85.0 * done / total, "parse", f"page {done}/{total} ({result['kind']})"
            )

        spool = ctx.workdir / "pages.jsonl"
        try:
            summary = run_pages(
                doc.path,
                pages,
                images_dir=outdir / "images",
                spool=spool,
                ocr=params.ocr,
                langs=langs,
                workers=self.workers,
                cancel=ctx.cancel_event,
                on_page=on_page,
                limits=self.limits,
            )
        except OcrUnavailable as exc:
            raise ProcessorError(
                f"this document has scanned pages but {exc}", retryable=True, code="ocr_unavailable"
            ) from exc
        except PagePoolBroken as exc:
            raise ProcessorError(str(exc), retryable=True) from exc
        if summary.failed_pages == summary.pages:
            if summary.timed_out == summary.pages:  # a busy host, perhaps: try again
                raise ProcessorError(summary.first_error, retryable=True, code="timeout")
            raise InputRejected(f"no page of the document could be parsed: {summary.first_error}")
        ctx.log(
            f"Pages: {summary.text_pages} with a text layer, {summary.scanned_pages} scanned, "
            f"{summary.ocr_pages} OCR'd, {summary.failed_pages} failed"
        )
        if summary.scanned_pages and params.ocr == "off":
            ctx.log("ocr is off: scanned pages are kept as images only")
        ctx.report_progress(91.0, "assemble", "writing Markdown and the content list")
        made = assemble(
            spool,
            outdir / f"{base}.md" if "markdown" in params.formats else None,
            outdir / f"{base}_content_list.json" if "content_list" in params.formats else None,
        )
        # drop images that no block kept (e.g. inside a table)
        for img in (outdir / "images").iterdir():
            if f"images/{img.name}" not in made.images:
                img.unlink()
        ctx.log(
            "Blocks: " + ", ".join(f"{n} {k}" for k, n in sorted(made.blocks.items()))
            or "Blocks: none"
        )
        if made.discarded:
            ctx.log(f"Running headers and footers left out: {made.discarded}")
        return summary

    def _need_ocr(self, params: DocparseParams) -> None:
        try:
            check_languages(params.ocr_langs)
        except OcrUnavailable as exc:
            raise ProcessorError(str(exc), retryable=True, code="ocr_unavailable") from exc

    def _publish(
        self,
        ctx: ProcessorContext,
        outdir: Path,
        prefix: str,
        params: DocparseParams,
        pages: int,
        engine: str,
        failed: list[int],
    ) -> list[OutputFile]:
        """Stage every file or none: a failure or cancel part-way removes what was staged.

        The two documents' ``meta`` names the pages that could not be parsed, so a
        pipeline sees a partial result without reading the task log."""
        files = sorted(p for p in outdir.rglob("*") if p.is_file())
        published: list[OutputFile] = []
        with publishing(ctx, published):
            for i, path in enumerate(files):
                _check_cancel(ctx)
                rel = path.relative_to(outdir).as_posix()
                key = validate_key(f"{prefix}/{rel}")
                ctx.report_progress(95.0 + 5.0 * i / len(files), "upload", f"uploading {rel}")
                ctype = _CONTENT_TYPES.get(path.suffix, "image/jpeg")
                if rel.endswith("_content_list.json"):
                    name = "content_list"
                elif rel.endswith(".md"):
                    name = "markdown"
                else:
                    name = rel
                meta: dict[str, Any] = {"engine": engine}
                if name in ("markdown", "content_list"):
                    meta["pages"] = pages  # feeds conveyor_docparse_pages_per_second
                    if failed:
                        meta["failed_pages"] = failed
                published.append(ctx.stager.put_file(name, key, path, ctype, meta))
        return published


def pages_per_second(tasks: Iterable[Task]) -> float | None:
    """Pages parsed per second of task run time, from the ``pages`` the outputs of
    ``tasks`` record (``_publish`` puts it there)."""
    pages, seconds = 0, 0.0
    for t in tasks:
        if t.started_at is None or t.finished_at is None:
            continue
        elapsed = max(0.0, (t.finished_at - t.started_at).total_seconds())
        n = max(
            (o.meta.get("pages", 0) for o in t.outputs if isinstance(o.meta.get("pages"), int)),
            default=0,
        )
        if n and elapsed > 0:
            pages += n
            seconds += elapsed
    return pages / seconds if seconds else None


def _base_name(key: str) -> str:
    """``docs/report.pdf`` -> ``report``: MinerU names its files after the input."""
    stem = PurePosixPath(key).stem or "document"
    return stem


def _default_prefix(key: str) -> str:
    """``docs/report.pdf`` -> ``docs/report``: each input gets a folder of outputs."""
    path = PurePosixPath(key)
    return str(path.with_suffix("")) if path.suffix else str(path)


def _check_cancel(ctx: ProcessorContext) -> None:
    if ctx.cancel_event.is_set():
        raise TaskCancelled("cancelled")


__all__ = ["DocparseParams", "DocparseProcessor", "DocparseSettings"]
