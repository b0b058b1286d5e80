"""What authentication costs a request: GET /api/queue/status with auth off, with a
bearer token, and with a console session cookie, in process on SQLite.

Prints requests per second and the per-request overhead of each mode.
    .venv/bin/python bench/auth_overhead.py [requests]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from fastapi.testclient import TestClient

from conveyor.auth.roles import Role
from conveyor.config import load_settings
from conveyor.server.app import create_app
from conveyor.server.runtime import Runtime


def run(n: int, auth: bool, mode: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(data_dir=Path(tmp), auth=auth, trigger_enabled=False)
        runtime = Runtime.build(settings, with_worker=False, with_trigger=False)
        with TestClient(create_app(runtime)) as client:
            headers: dict[str, str] = {}
            if mode == "bearer":
                token = runtime.service.auth.create_token("bench", Role.VIEWER).token
                headers = {"Authorization": f"Bearer {token}"}
            elif mode == "session":
                token = runtime.service.auth.create_token("bench", Role.VIEWER).token
                r = client.post("/admin/login", data={"token": token}, follow_redirects=False)
                assert r.status_code == 303, r.text
            for _ in range(20):  # warm up
                assert client.get("/api/queue/status", headers=headers).status_code == 200
            start = time.perf_counter()
            for _ in range(n):
                client.get("/api/queue/status", headers=headers)
            return (time.perf_counter() - start) / n


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    base = run(n, False, "open")
    print(f"auth off:        {1 / base:7.0f} req/s  ({base * 1e3:.2f} ms/request)")
    for mode in ("bearer", "session"):
        t = run(n, True, mode)
        print(
            f"auth on, {mode:7s}: {1 / t:7.0f} req/s  ({t * 1e3:.2f} ms/request, "
            f"+{(t - base) * 1e3:.2f} ms)"
        )


if __name__ == "__main__":
    main()
