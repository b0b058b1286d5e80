"""The docparse kind's settings: ``CONVEYOR_DOCPARSE_*`` (docs/docparse.md), and
``MINERU_API_URL`` (also ``CONVEYOR_MINERU_API_URL``) for a MinerU server."""

from __future__ import annotations

from typing import ClassVar

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from conveyor.config import KindSettings

from .limits import MAX_DOCUMENT_PIXELS, MAX_PAGE_PIXELS, MIN_DPI, PAGE_MEMORY_MB, PAGE_TIMEOUT_S


class DocparseSettings(KindSettings):
    model_config = SettingsConfigDict(env_prefix="CONVEYOR_DOCPARSE_")
    keys: ClassVar[dict[str, str]] = {"mineru_api_url": "mineru_api_url"}

    # page processes per task (0 = one per CPU core)
    workers: int = Field(0, ge=0, le=256)
    # an optional mineru-api server (MinerU's GPU parser) the mineru engine sends work to
    mineru_api_url: str = Field(
        "",
        validation_alias=AliasChoices(
            "CONVEYOR_DOCPARSE_MINERU_API_URL", "CONVEYOR_MINERU_API_URL", "MINERU_API_URL"
        ),
    )
    # limits on input (docs/docparse.md, "Limits on input"): pixels a page or image frame
    # may take (big pages are rendered for OCR at down to min_dpi), pixels a document may
    # take, and each page process's address space (MiB, 0 = none) and time per page
    max_page_pixels: int = Field(MAX_PAGE_PIXELS, ge=1_000_000)
    min_dpi: int = Field(MIN_DPI, ge=36, le=200)
    max_document_pixels: int = Field(MAX_DOCUMENT_PIXELS, ge=1_000_000)
    page_memory_mb: int = Field(PAGE_MEMORY_MB, ge=0)
    page_timeout: float = Field(PAGE_TIMEOUT_S, gt=0, le=86400)
