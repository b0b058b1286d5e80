"""Fixtures shared by the console's in-process tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import in_process_app


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The real app on SQLite in this process (no worker, no trigger), uploads capped at 1 MB."""
    with in_process_app(tmp_path, monkeypatch, max_upload_bytes=1_000_000) as client:
        yield client
