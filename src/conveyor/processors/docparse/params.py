"""What a docparse task may ask for: the contract with API, CLI and console.

Unknown fields are refused, not ignored, so a typo in a pipeline fails at
submit time instead of silently parsing with the defaults.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from conveyor.processors.docparse.pages import parse_page_range

OutputFormat = Literal["markdown", "content_list"]
OcrMode = Literal["auto", "force", "off"]
Engine = Literal["auto", "lite", "mineru"]

# tesseract's names for the languages the worker image installs; others are
# accepted when the worker has their traineddata (checked at run time).
_LANG = re.compile(r"^[a-z]{3}(_[a-z]{3,4})?$")
DEFAULT_LANGS = ["eng", "chi_sim"]


def _all_formats() -> list[OutputFormat]:
    return ["markdown", "content_list"]


class DocparseParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    formats: list[OutputFormat] = Field(default_factory=_all_formats, min_length=1)
    # 1-based, inclusive, like a print dialog: "1-5,8,10-"; None means every page.
    pages: str | None = Field(None, max_length=200)
    ocr: OcrMode = "auto"
    ocr_langs: list[str] = Field(default_factory=lambda: list(DEFAULT_LANGS), min_length=1)
    engine: Engine = "auto"
    # Publish under this key prefix instead of "<input key without extension>/".
    output_prefix: str | None = None
    # Read by the worker for its per-task timeout; kept so validation does not drop it.
    timeout_s: float | None = Field(None, gt=0, le=7 * 86400)  # as SubmitRequest.timeout_s

    @field_validator("formats")
    @classmethod
    def _dedupe_formats(cls, v: list[OutputFormat]) -> list[OutputFormat]:
        return list(dict.fromkeys(v))

    @field_validator("pages")
    @classmethod
    def _pages(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        parse_page_range(v)  # raises ValueError with the reason
        return v.strip()

    @field_validator("ocr_langs")
    @classmethod
    def _langs(cls, v: list[str]) -> list[str]:
        out: list[str] = []
        for lang in v:
            lang = lang.strip().lower().replace("-", "_")
            if lang in ("en", "english"):
                lang = "eng"
            elif lang in ("ch", "zh", "zh_cn", "chinese", "chi"):
                lang = "chi_sim"
            if not _LANG.match(lang):
                raise ValueError(f"{lang!r} is not an OCR language name such as eng or chi_sim")
            if lang not in out:
                out.append(lang)
        return out

    @field_validator("output_prefix")
    @classmethod
    def _prefix(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = v.strip().strip("/")
        return v or None
