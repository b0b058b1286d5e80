"""Real PDFium, real tesseract, real local storage, a context like the worker builds.

The PDFs are generated once per session with reportlab (tests/docparse_samples.py).
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conveyor.models import InputRef, OutputFile, Task
from conveyor.processors.base import ProcessorContext
from conveyor.processors.docparse import DocparseProcessor
from conveyor.storage.local import LocalBlobStore
from tests.conftest import IN_CI, need_tool, publish, stored_outputs
from tests.docparse_samples import CJK_FONT_FILES, make_sample_pdf, make_scanned_copy


@dataclass
class Recorder:
    logs: list[str] = field(default_factory=list)
    progress: list[tuple[float, str, str]] = field(default_factory=list)
    on_progress: Callable[[float, str, str], None] | None = None

    def report(self, percent: float, phase: str, message: str) -> None:
        self.progress.append((percent, phase, message))
        if self.on_progress is not None:
            self.on_progress(percent, phase, message)


@dataclass
class Settings:
    docparse_workers: int = 2
    mineru_api_url: str = ""


@dataclass
class Harness:
    root: Path
    store: LocalBlobStore

    def context(
        self,
        key: str,
        params: dict[str, Any],
        *,
        recorder: Recorder | None = None,
        cancel_event: threading.Event | None = None,
    ) -> ProcessorContext:
        workdir = self.root / "work" / f"task-{uuid.uuid4().hex}"
        workdir.mkdir(parents=True)
        rec = recorder or Recorder()
        return ProcessorContext(
            task=Task(kind="docparse", input=InputRef(bucket="input", key=key), params=params),
            workdir=workdir,
            storage=self.store,
            output_bucket="output",
            report_progress=rec.report,
            log=rec.logs.append,
            cancel_event=cancel_event or threading.Event(),
        )

    def run(
        self,
        path: Path,
        *,
        key: str | None = None,
        settings: Any = None,
        recorder: Recorder | None = None,
        cancel_event: threading.Event | None = None,
        **params: Any,
    ) -> list[OutputFile]:
        key = key or f"docs/{path.name}"
        self.store.put_file("input", key, path)
        proc = DocparseProcessor(settings or Settings())
        params = proc.validate(params, InputRef(bucket="input", key=key))
        ctx = self.context(key, params, recorder=recorder, cancel_event=cancel_event)
        return publish(self.store, proc.run(ctx))

    def local(self, out: OutputFile) -> Path:
        path = self.store.local_path(out.bucket, out.key)
        assert path is not None and path.is_file(), out.key
        return path

    def output(self, outputs: list[OutputFile], name: str) -> OutputFile:
        found = [o for o in outputs if o.name == name]
        assert len(found) == 1, [o.name for o in outputs]
        return found[0]

    def markdown(self, outputs: list[OutputFile]) -> str:
        return self.local(self.output(outputs, "markdown")).read_text(encoding="utf-8")

    def content_list(self, outputs: list[OutputFile]) -> list[dict[str, Any]]:
        data = json.loads(self.local(self.output(outputs, "content_list")).read_text("utf-8"))
        assert isinstance(data, list)
        return data

    def published(self) -> list[str]:
        return stored_outputs(self.store)


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(root=tmp_path, store=LocalBlobStore(tmp_path / "buckets"))


@pytest.fixture(scope="session")
def dp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("docparse")


@pytest.fixture(scope="session")
def sample_pdf(dp_dir: Path) -> Path:
    if not any(p.is_file() for p in CJK_FONT_FILES):  # make test-deps installs one
        msg = "no CJK TrueType font (fonts-wqy-microhei): run make test-deps"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return make_sample_pdf(dp_dir / "report.pdf")


@pytest.fixture(scope="session")
def scanned_pdf(dp_dir: Path, sample_pdf: Path) -> Path:
    return make_scanned_copy(sample_pdf, dp_dir / "scanned.pdf")


@pytest.fixture
def with_tesseract() -> None:
    need_tool("tesseract")
