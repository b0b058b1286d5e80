"""Fixtures shared by the console's in-process tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conveyor.config import load_settings
from conveyor.server.app import create_app
from conveyor.server.runtime import Runtime


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The real app on SQLite in this process (no worker, no trigger), uploads capped at 1 MB."""
    monkeypatch.setenv("CONVEYOR_CONFIG", str(tmp_path / "none.yaml"))
    settings = load_settings(data_dir=tmp_path, max_upload_bytes=1_000_000)
    runtime = Runtime.build(settings, with_worker=False, with_trigger=False)
    with TestClient(create_app(runtime)) as client:
        yield client
