"""The scripted fault run of issue 14 (``tests/chaos/faultrun.py``), as a test.

PostgreSQL + SeaweedFS (versioned output bucket), ``conveyor serve`` and
three ``conveyor worker`` processes with a 6 s lease; workers SIGKILLed and
SIGSTOPped past their lease, PostgreSQL restarted, the API SIGKILLed, S3
stopped for 10 s; then lost = duplicated = stuck = failed = 0, every
completed task's outputs at their final keys and untouched after completion,
every container ``result.txt`` from the attempt that completed it, every 5xx
JSON with a code and every 503 with ``Retry-After``.

By default 30 tasks, one of each fault, faults and submissions at 0.7 times the large
run's pauses (under a minute on two cores);
``CONVEYOR_CHAOS_LARGE=1`` runs 160 tasks, every fault, two rounds (about two
and a half minutes). ``python -m tests.chaos.faultrun [--large] [--keep]`` runs
it without pytest.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chaos.faultrun import FaultRun, RunConfig
from tests.conftest import IN_CI, need_tool
from tests.pgserver import find_pg_bin
from tests.s3server import find_weed

LARGE = os.environ.get("CONVEYOR_CHAOS_LARGE", "").lower() in ("1", "true", "yes")


def _need_servers() -> None:
    missing = [
        what
        for what, found in (
            ("PostgreSQL (initdb)", find_pg_bin()),
            ("SeaweedFS (weed)", find_weed()),
        )
        if found is None
    ]
    if missing:
        msg = f"required for the fault run: {', '.join(missing)}"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.mark.slow
@pytest.mark.timeout(2400 if LARGE else 900)
def test_fault_run(tmp_path: Path) -> None:
    need_tool("ffmpeg", "ffprobe")
    _need_servers()
    cfg = RunConfig.large() if LARGE else RunConfig.default()
    report = FaultRun(cfg, tmp_path).run()
    print(report.table())
    for line in report.faults:
        print("  fault:", line)
    for line, n in report.log_errors.most_common(10):
        print(f"  log: {n:4d} x {line}")
    failures = report.failures()
    for line in failures:
        print("  FAIL:", line)
    # every kind of fault happened (a run that injected none would prove nothing)
    for kind in ("worker SIGKILL", "worker SIGSTOP past lease", "PostgreSQL restart -m fast"):
        assert report.fault_counts[kind] >= cfg.rounds, (kind, report.faults)
    for kind in ("API SIGKILL", "S3 outage"):
        assert report.fault_counts[kind] >= cfg.rounds, (kind, report.faults)
    assert report.submissions == cfg.tasks
    assert not failures, "\n".join(failures)
