"""The ``mineru`` engine: MinerU itself, in this process or behind a mineru-api server.

Where a GPU host has the ``mineru`` package and its models, it is called in
process; where ``MINERU_API_URL`` names a ``mineru-api`` server, the PDF is
posted to its ``/file_parse`` endpoint (multipart, answering with the
Markdown, the content list and base64 images in one JSON reply).  Either way
the result is written under the same names and shapes as the ``lite``
engine's, so a pipeline does not notice which one ran.

Only the HTTP shape is tested here, against a local fake of that server; the
real MinerU models cannot be downloaded on the build machines.
"""

from __future__ import annotations

import base64
import binascii
import concurrent.futures
import importlib.util
import json
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from conveyor.errors import TaskCancelled

# tesseract's language names to MinerU's (its OCR models are per script)
_LANGS = {"eng": "en", "chi_sim": "ch", "chi_tra": "chinese_cht", "jpn": "japan", "kor": "korean"}
_IMAGE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


class MineruError(RuntimeError):
    """MinerU could not parse the document (server down, bad reply, crash)."""


@dataclass
class MineruResult:
    pages: int
    images: int
    engine: str  # mineru-api | mineru


def mineru_mode(api_url: str) -> str | None:
    """``http`` when a server is named (an explicit choice wins), ``inprocess`` when the
    package is installed, else None."""
    if api_url:
        return "http"
    if importlib.util.find_spec("mineru") is not None:
        return "inprocess"
    return None


def mineru_lang(langs: list[str]) -> str:
    """MinerU takes one OCR language per file; its Chinese models also read Latin text."""
    for lang in langs:
        if lang.startswith("chi") and lang in _LANGS:
            return _LANGS[lang]
    return _LANGS.get(langs[0], "ch") if langs else "ch"


def parse_method(ocr: str) -> str:
    return {"force": "ocr", "off": "txt"}.get(ocr, "auto")


def _write_outputs(
    outdir: Path,
    base: str,
    md: str | None,
    content_list: list[dict[str, Any]] | None,
    images: dict[str, bytes],
) -> MineruResult:
    images_dir = outdir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    for name, data in images.items():
        if not _IMAGE_NAME.match(name) or name.startswith("."):
            raise MineruError(f"MinerU returned an image with an unsafe name: {name!r}")
        (images_dir / name).write_bytes(data)
    if md is not None:
        (outdir / f"{base}.md").write_text(md, encoding="utf-8")
    pages = 0
    if content_list is not None:
        (outdir / f"{base}_content_list.json").write_text(
            json.dumps(content_list, ensure_ascii=False, indent=1), encoding="utf-8"
        )
        pages = 1 + max((int(i.get("page_idx", 0)) for i in content_list), default=-1)
    return MineruResult(pages=pages, images=len(images), engine="mineru")


def _decode_image(value: str) -> bytes:
    payload = value.split(",", 1)[1] if value.startswith("data:") else value
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MineruError(f"MinerU returned an image that is not base64: {exc}") from exc


def parse_http(
    api_url: str,
    pdf: Path,
    outdir: Path,
    base: str,
    *,
    first_page: int,
    last_page: int,
    langs: list[str],
    ocr: str,
    cancel: threading.Event,
    timeout_s: float,
) -> MineruResult:
    """POST the PDF to mineru-api's ``/file_parse`` and write what it returns."""
    url = api_url.rstrip("/") + "/file_parse"
    data = {
        "lang_list": mineru_lang(langs),
        "backend": "pipeline",
        "parse_method": parse_method(ocr),
        "formula_enable": "true",
        "table_enable": "true",
        "return_md": "true",
        "return_content_list": "true",
        "return_images": "true",
        "start_page_id": str(first_page),
        "end_page_id": str(last_page),
    }
    client = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=10.0))

    def call() -> httpx.Response:
        with pdf.open("rb") as fh:
            files = {"files": (f"{base}.pdf", fh, "application/pdf")}
            return client.post(url, data=data, files=files)

    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mineru-http")
    try:
        future = pool.submit(call)
        while True:  # wait, but notice a cancel within half a second
            try:
                resp = future.result(timeout=0.5)
                break
            except concurrent.futures.TimeoutError:
                if cancel.is_set():
                    client.close()  # the blocked request fails at once
                    raise TaskCancelled("cancelled") from None
    except httpx.HTTPError as exc:
        raise MineruError(f"mineru-api at {api_url} could not be reached: {exc}") from exc
    finally:
        pool.shutdown(wait=False)
        client.close()
    if resp.status_code != 200:
        raise MineruError(f"mineru-api answered {resp.status_code}: {resp.text[:300]}")
    try:
        body = resp.json()
        results = body["results"]
        result = results.get(base) or next(iter(results.values()))
    except (ValueError, KeyError, StopIteration, AttributeError) as exc:
        raise MineruError(f"mineru-api sent a reply without results: {resp.text[:300]}") from exc
    raw_list = result.get("content_list")
    content_list = json.loads(raw_list) if isinstance(raw_list, str) else raw_list
    if content_list is not None and not isinstance(content_list, list):
        raise MineruError("mineru-api sent a content list that is not a list")
    images = {name: _decode_image(v) for name, v in (result.get("images") or {}).items()}
    out = _write_outputs(outdir, base, result.get("md_content"), content_list, images)
    out.engine = f"mineru-api {body.get('version', '')}".strip()
    return out


def parse_inprocess(
    pdf: Path,
    outdir: Path,
    base: str,
    *,
    first_page: int,
    last_page: int,
    langs: list[str],
    ocr: str,
    workdir: Path,
) -> MineruResult:  # pragma: no cover - needs MinerU's models, which CI cannot download
    """Call MinerU's own ``do_parse`` and move its files to our layout."""
    try:
        from mineru.cli.common import do_parse  # type: ignore[import-not-found]
    except ImportError as exc:
        raise MineruError(f"the mineru package is installed but cannot be imported: {exc}") from exc
    method = parse_method(ocr)
    scratch = workdir / "mineru"
    try:
        do_parse(
            output_dir=str(scratch),
            pdf_file_names=[base],
            pdf_bytes_list=[pdf.read_bytes()],
            p_lang_list=[mineru_lang(langs)],
            backend="pipeline",
            parse_method=method,
            f_draw_layout_bbox=False,
            f_draw_span_bbox=False,
            f_dump_md=True,
            f_dump_middle_json=False,
            f_dump_model_output=False,
            f_dump_orig_pdf=False,
            f_dump_content_list=True,
            start_page_id=first_page,
            end_page_id=last_page,
        )
    except Exception as exc:
        raise MineruError(f"MinerU failed: {exc}") from exc
    found = scratch / base / method
    md_path = found / f"{base}.md"
    cl_path = found / f"{base}_content_list.json"
    if not md_path.is_file():
        raise MineruError(f"MinerU wrote no Markdown under {found}")
    images = {p.name: p.read_bytes() for p in (found / "images").glob("*") if p.is_file()}
    content_list = json.loads(cl_path.read_text(encoding="utf-8")) if cl_path.is_file() else []
    result = _write_outputs(outdir, base, md_path.read_text(encoding="utf-8"), content_list, images)
    shutil.rmtree(scratch, ignore_errors=True)
    return result
