"""An API with auth on, on the embedded engines, in process; tokens for every role."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conveyor.auth.roles import Role
from conveyor.auth.service import AuthService
from conveyor.config import load_settings
from conveyor.server.app import create_app
from conveyor.server.runtime import Runtime


@dataclass
class SecuredApi:
    client: TestClient
    auth: AuthService
    tokens: dict[Role, str] = field(default_factory=dict)

    def headers(self, role: Role | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}

    def enroll(self, name: str) -> str:
        """A live worker credential, as a joined worker holds it."""
        token, _ = self.auth.create_enrollment_token(name=name)
        return self.auth.enroll(token, name).credential


@pytest.fixture
def secured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SecuredApi]:
    monkeypatch.setenv("CONVEYOR_CONFIG", str(tmp_path / "none.yaml"))
    settings = load_settings(
        data_dir=tmp_path, max_upload_bytes=1_000_000, auth=True, auth_rate_limit=1000
    )
    runtime = Runtime.build(settings, with_worker=False, with_trigger=False)
    auth = runtime.service.auth
    api = SecuredApi(TestClient(create_app(runtime)), auth)
    for role in Role:
        if role is Role.WORKER:
            api.tokens[role] = api.enroll("matrix-worker")
        else:
            api.tokens[role] = auth.create_token(f"{role.value}-user", role).token
    with api.client:
        yield api
