"""A remote worker's own credential: enrolled once, kept in a 0600 file, rotated before expiry.

``conveyor worker --join https://API --enroll TOKEN`` exchanges a one-time
enrollment token for the worker's credential (``POST /api/workers/enroll``)
and stores ``{api, worker_id, credential, expires_at}`` in a file only its
owner can read.  Later starts read the file.  While the worker runs,
:class:`CredentialKeeper` rotates the credential (``POST
/api/workers/rotate``) once less than a third of its lifetime remains and
rewrites the file atomically, so a crash mid-rotation leaves the old or the
new credential, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import tempfile
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from conveyor.errors import ConveyorError, InvalidRequest, WorkerCredentialRejected
from conveyor.remote.connection import ApiConnection

log = logging.getLogger("conveyor.remote.credential")

DEFAULT_CREDENTIAL_FILE = Path("~/.config/conveyor/worker.json")
ROTATE_WHEN_LEFT = 1 / 3  # of the credential's lifetime


class WorkerCredential(BaseModel):
    api: str
    worker_id: str
    credential: str
    expires_at: datetime
    issued_at: datetime  # when this worker received it: the lifetime's start

    def rotate_at(self) -> datetime:
        lifetime = self.expires_at - self.issued_at
        return self.expires_at - max(lifetime, timedelta(0)) * ROTATE_WHEN_LEFT

    def __repr__(self) -> str:  # never print the secret
        return f"WorkerCredential(worker_id={self.worker_id!r}, expires_at={self.expires_at})"

    __str__ = __repr__


def _parse(api: str, body: Any, what: str) -> WorkerCredential:
    try:
        return WorkerCredential(
            api=api,
            worker_id=str(body["worker_id"]),
            credential=str(body["credential"]),
            expires_at=datetime.fromisoformat(str(body["expires_at"]).replace("Z", "+00:00")),
            issued_at=datetime.now(UTC),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConveyorError(f"the API's {what} answer is not a worker credential: {exc}") from None


def host_name() -> str:
    """This host's short name, reduced to the characters a worker name may hold."""
    short = socket.gethostname().split(".")[0]
    cleaned = re.sub(r"[^A-Za-z0-9._@-]", "-", short).lstrip("._@-")[:64]
    return cleaned or "worker"


def enroll(conn: ApiConnection, token: str, name: str | None) -> WorkerCredential:
    """Exchange a one-time enrollment token; not retried once sent (it is single-use).

    Without ``name`` the worker enrolls under its host name, which is also the
    worker id the credential speaks for.
    """
    try:
        body = conn.call(
            "/api/workers/enroll", {"token": token, "name": name or host_name()}, idempotent=False
        )
    except WorkerCredentialRejected as exc:
        raise WorkerCredentialRejected(
            f"enrollment refused (token used, expired or invalid): {exc.message}"
        ) from None
    return _parse(conn.url, body, "enrollment")


def rotate(conn: ApiConnection) -> WorkerCredential:
    """Trade the connection's current credential for a new one."""
    return _parse(conn.url, conn.call("/api/workers/rotate", {}, idempotent=False), "rotation")


def write_credential_file(path: Path, cred: WorkerCredential) -> None:
    """Write atomically with mode 0600: a temp file in the same folder, then a rename."""
    path = path.expanduser()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(cred.model_dump_json(indent=2))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def read_credential_file(path: Path) -> WorkerCredential:
    path = path.expanduser()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return WorkerCredential.model_validate(raw)
    except FileNotFoundError:
        raise InvalidRequest(
            f"no worker credential in {path}: enroll first with "
            "`conveyor worker --join URL --enroll TOKEN`"
        ) from None
    except (ValueError, ValidationError) as exc:
        raise InvalidRequest(f"{path} is not a worker credential file: {exc}") from None


class CredentialKeeper:
    """Holds the current credential for every request and rotates it in the background."""

    def __init__(self, path: Path, cred: WorkerCredential, check_s: float = 60.0) -> None:
        self.path = path
        self._cred = cred
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._check_s = check_s
        self._thread: threading.Thread | None = None
        self.conn: ApiConnection | None = None

    @property
    def worker_id(self) -> str:
        return self._cred.worker_id

    def current(self) -> str:
        with self._lock:
            return self._cred.credential

    def start(self, conn: ApiConnection) -> None:
        self.conn = conn
        self._thread = threading.Thread(target=self._run, name="conveyor-credential", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def rotate_if_due(self, now: datetime | None = None) -> bool:
        with self._lock:
            cred = self._cred
        if (now or datetime.now(UTC)) < cred.rotate_at():
            return False
        assert self.conn is not None
        new = rotate(self.conn)
        write_credential_file(self.path, new)
        with self._lock:
            self._cred = new
        log.info(
            "Worker credential rotated; the new one expires at %s (stored in %s)",
            new.expires_at.isoformat(),
            self.path,
        )
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                cred = self._cred
            lifetime = (cred.expires_at - cred.issued_at).total_seconds()
            try:
                self.rotate_if_due()
            except WorkerCredentialRejected as exc:
                log.error("Worker credential rotation refused: %s", exc.message)
            except Exception:
                log.exception("Worker credential rotation failed; will retry")
            self._stop.wait(max(0.2, min(self._check_s, lifetime / 20)))
