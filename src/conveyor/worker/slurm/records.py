"""What the executor must not lose when it dies: each attempt it holds, with its lease.

Slurm says which jobs exist (the jobs' names and comments say whose they are and which
task and attempt each runs); only the lease token, the secret that fences an
attempt's reports, cannot be put in a job's comment, where every user of the cluster
may read it.  So the executor keeps one small file per attempt it holds, written
before it submits the job and updated with the job's id after, in a folder only its
user can read (``<data dir>/slurm/<executor id>/``, 0700; files 0600, written
atomically).  A restarted executor reads them back and adopts its jobs
(``SlurmExecutor._adopt``).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

from pydantic import BaseModel, ValidationError

from conveyor.models import Lease, Task


class JobRecord(BaseModel):
    task: Task
    lease: Lease
    job_id: str | None = None
    name: str = ""
    cancel_sent: bool = False

    @property
    def key(self) -> str:
        return f"{self.task.id}-{self.lease.attempt}"


class JobRecords:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(folder, 0o700)

    @staticmethod
    def for_worker(root: Path, worker_id: str) -> JobRecords:
        safe = re.sub(r"[^A-Za-z0-9._@-]", "_", worker_id)[:120] or "worker"
        return JobRecords(root / safe)

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def put(self, rec: JobRecord) -> JobRecord:
        fd, tmp = tempfile.mkstemp(prefix=".rec.", dir=self.folder)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(rec.model_dump_json())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self._path(rec.key))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return rec

    def get(self, task_id: str, attempt: int) -> JobRecord | None:
        return self._read(self._path(f"{task_id}-{attempt}"))

    def _read(self, path: Path) -> JobRecord | None:
        try:
            return JobRecord.model_validate_json(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, ValidationError):
            return None

    def all(self) -> list[JobRecord]:
        out = []
        for path in sorted(self.folder.glob("*.json")):
            rec = self._read(path)
            if rec is not None:
                out.append(rec)
        return out

    def drop(self, task_id: str, attempt: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(f"{task_id}-{attempt}").unlink()
