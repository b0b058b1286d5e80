"""Single use holds across API processes: two apps on one database, one token, one winner.

Runs on SQLite (one file, two processes' worth of handles), PostgreSQL and the
AWS engine (DynamoDB on moto), each app with its own backend handle, as two
API replicas behind a load balancer would be.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conveyor.config import load_settings
from conveyor.server.app import create_app
from conveyor.server.runtime import Runtime


def _sqlite(tmp: Path) -> str:
    return f"sqlite:///{tmp / 'shared.db'}"


def _postgres(tmp: Path) -> str:
    from tests.pgserver import require_cluster

    return require_cluster().rolling_database()


def _aws(tmp: Path) -> str:
    from tests.motoserver import require_server

    return require_server().backend_url()


ENGINES: dict[str, Callable[[Path], str]] = {
    "sqlite": _sqlite,
    "postgres": _postgres,
    "aws": _aws,
}


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_one_token_enrolls_once_across_replicas(
    engine: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVEYOR_CONFIG", str(tmp_path / "none.yaml"))
    url = ENGINES[engine](tmp_path)
    runtimes = [
        Runtime.build(
            load_settings(
                data_dir=tmp_path / f"replica{i}",
                backend_url=url,
                auth=True,
                trigger_enabled=False,
            ),
            with_worker=False,
            with_trigger=False,
        )
        for i in range(2)
    ]
    # a token signed by replica 0 verifies on replica 1: the key lives in the backend
    token, _ = runtimes[0].service.auth.create_enrollment_token(name="gpu-z")
    codes: list[int] = []
    with TestClient(create_app(runtimes[0])) as a, TestClient(create_app(runtimes[1])) as b:

        def post(client: TestClient) -> None:
            r = client.post("/api/workers/enroll", json={"token": token, "name": "gpu-z"})
            codes.append(r.status_code)

        threads = [threading.Thread(target=post, args=(c,)) for c in (a, b, a, b)]
        for t in threads:
            t.start()
            if engine == "aws":  # moto does not serialise conditional writes: see
                t.join()  # tests/contract/test_auth_store_contract.py
        for t in threads:
            t.join()
    assert sorted(codes) == [200, 401, 401, 401], codes
