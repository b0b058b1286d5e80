"""Schemathesis against the OpenAPI schema, with an admin token, auth on.

Generated requests for every documented operation: no 5xx, and every answer
the schema documents matches it.  Few examples per operation (time budget);
``SCHEMATHESIS_EXAMPLES`` raises it for a longer run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis import checks

from conveyor.config import load_settings
from conveyor.server.app import create_app
from conveyor.server.runtime import Runtime

_DIR = Path(tempfile.mkdtemp(prefix="conveyor-schemathesis-"))
_settings = load_settings(data_dir=_DIR, auth=True, auth_rate_limit=100_000, trigger_enabled=False)
_runtime = Runtime.build(_settings, with_worker=False, with_trigger=False)
APP = create_app(_runtime)
ADMIN = _runtime.service.auth.create_token("schemathesis", "admin").token
# the schema is read from the app; requests go through one TestClient kept open for the
# module (the ASGI loader would run the app's lifespan, and so start and stop the
# runtime, around every single request)
schema = schemathesis.openapi.from_dict(APP.openapi())
EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "8"))


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(APP, base_url="http://testserver") as c:
        yield c
    shutil.rmtree(_DIR, ignore_errors=True)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_api_against_its_schema(client: TestClient, case: schemathesis.Case) -> None:
    if case.path.endswith("/logs") and isinstance(case.query, dict):
        case.query.pop("follow", None)  # a stream that lasts as long as the task
    if case.path == "/api/events":  # the event stream lasts until the client leaves
        case.query = {**(case.query if isinstance(case.query, dict) else {}), "follow": "false"}
    kwargs = case.as_transport_kwargs(
        base_url="http://testserver", headers={"Authorization": f"Bearer {ADMIN}"}
    )
    kwargs.pop("cookies", None)
    response = client.request(**kwargs)
    case.validate_response(
        response, checks=[checks.not_a_server_error, checks.response_schema_conformance]
    )
