"""``conveyor submit`` of a PDF against ``conveyor up``: the page pool inside the real server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import FAST_ENV, launch, wait_task
from tests.docparse_samples import HEADINGS, make_sample_pdf


def test_cli_submits_a_pdf_as_docparse_and_waits(tmp_path: Path) -> None:
    pdf = make_sample_pdf(tmp_path / "report.pdf")
    server = launch(tmp_path, "up", env={**FAST_ENV, "CONVEYOR_DOCPARSE_WORKERS": "2"})
    try:

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "conveyor", *args, "--url", server.url],
                capture_output=True,
                text=True,
                timeout=120,
            )

        out = cli("submit", str(pdf), "--pages", "1-2", "--engine", "lite", "--wait")
        assert out.returncode == 0, out.stdout + out.stderr + server.log_text()
        assert "completed" in out.stdout
        tasks = server.client.get("/api/tasks").json()["tasks"]
        assert len(tasks) == 1
        task = wait_task(server.client, tasks[0]["id"])
        assert task["kind"] == "docparse" and task["params"]["pages"] == "1-2"
        md = server.client.get("/api/files/output/report/report.md").text
        assert f"# {HEADINGS[1]}" in md
        wrong = cli("submit", str(pdf), "--kind", "transcode", "--ocr", "force")
        assert wrong.returncode == 2 and "are for docparse" in wrong.stderr
    finally:
        server.stop()
