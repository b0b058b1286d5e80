"""No code of ours hands a string to a shell: every process gets an argument list."""

from __future__ import annotations

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "conveyor"
FORBIDDEN = re.compile(r"shell\s*=\s*True|os\.system\(|os\.popen\(|commands\.getoutput")


def test_no_shell_anywhere() -> None:
    files = list(SRC.rglob("*.py"))
    assert len(files) > 50
    hits = [
        f"{path.relative_to(SRC)}:{n}: {line.strip()}"
        for path in files
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if FORBIDDEN.search(line)
    ]
    assert hits == [], hits
