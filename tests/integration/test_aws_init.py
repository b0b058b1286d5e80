"""``conveyor aws init`` against a real ``moto_server`` started here, on 127.0.0.1.

The server is this module's own (a free port, stopped by its PID at the end).
Dummy credentials and a region are set for this test only, never in src/.
When moto_server is missing the tests skip, or fail under CI=true.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import boto3
import pytest
from botocore.config import Config
from typer.testing import CliRunner

from conveyor.backends.aws.provision import CREATED, FOUND, InitPlan, init_resources
from conveyor.cli.aws import aws_app
from conveyor.models import Trigger
from conveyor.processors import ProcessorRegistry
from conveyor.service import ConveyorService, SubmitRequest
from conveyor.triggers.s3_events import S3EventConsumer

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REGION = "us-east-1"  # moto's home region; also exercises create_bucket without a constraint
DUMMY_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_REGION": REGION,
    "AWS_DEFAULT_REGION": REGION,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _moto_binary() -> str | None:
    local = Path(sys.executable).parent / "moto_server"
    return str(local) if local.exists() else shutil.which("moto_server")


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    binary = _moto_binary()
    if binary is None:
        msg = "moto_server not installed (pip install 'moto[server]')"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **DUMMY_ENV},
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto_server did not start on {endpoint}")
                time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in DUMMY_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def _plan(endpoint: str) -> InitPlan:
    sfx = uuid.uuid4().hex[:10]
    return InitPlan(
        region=REGION,
        queue_name=f"conveyor-{sfx}",
        table=f"conveyor-{sfx}",
        input_bucket=f"conveyor-in-{sfx}",
        output_bucket=f"conveyor-out-{sfx}",
        events_queue_name=f"conveyor-{sfx}-upload-events",
        endpoint_url=endpoint,
        max_receives=7,
    )


def _client(service: str, endpoint: str) -> Any:
    cfg = Config(s3={"addressing_style": "path"})
    factory: Any = boto3.client  # a service name chosen at run time: no typed overload
    return factory(service, region_name=REGION, endpoint_url=endpoint, config=cfg)


def test_init_is_idempotent_and_sets_the_notification(moto_endpoint: str, aws_env: None) -> None:
    plan = _plan(moto_endpoint)
    first = init_resources(plan)
    assert {s.status for s in first.steps} == {CREATED}
    kinds = sorted(s.kind for s in first.steps)
    expected = ["table", "table", "queue", "queue", "bucket", "bucket", "queue", "queue"]
    assert kinds == sorted([*expected, "queue policy", "notification"])

    second = init_resources(plan)
    assert second.created == [], second.created
    assert {s.status for s in second.steps} == {FOUND}
    assert second.queue_url == first.queue_url
    assert second.events_queue_url == first.events_queue_url

    ddb, sqs, s3 = (_client(n, moto_endpoint) for n in ("dynamodb", "sqs", "s3"))
    table = ddb.describe_table(TableName=plan.table)["Table"]
    assert {i["IndexName"] for i in table["GlobalSecondaryIndexes"]} == {
        "date-index",
        "status-index",
        "outbox-index",  # the tasks whose events are not yet sequenced (issue 19)
    }
    assert table["KeySchema"] == [{"AttributeName": "task_id", "KeyType": "HASH"}]

    attrs = sqs.get_queue_attributes(QueueUrl=first.queue_url, AttributeNames=["All"])
    redrive = json.loads(attrs["Attributes"]["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"].endswith(f":{plan.queue_name}-dlq")
    assert int(redrive["maxReceiveCount"]) == 7

    events = sqs.get_queue_attributes(QueueUrl=first.events_queue_url, AttributeNames=["All"])
    events_arn = events["Attributes"]["QueueArn"]
    policy = json.loads(events["Attributes"]["Policy"])
    [stmt] = policy["Statement"]
    assert stmt["Principal"] == {"Service": "s3.amazonaws.com"}
    assert stmt["Condition"]["ArnLike"]["aws:SourceArn"].endswith(f":::{plan.input_bucket}")
    assert json.loads(events["Attributes"]["RedrivePolicy"])["deadLetterTargetArn"].endswith(
        f":{plan.events_queue_name}-dlq"
    )

    notif = s3.get_bucket_notification_configuration(Bucket=plan.input_bucket)
    [qc] = notif["QueueConfigurations"]
    assert qc["QueueArn"] == events_arn
    assert qc["Events"] == ["s3:ObjectCreated:*"]
    pab = s3.get_public_access_block(Bucket=plan.input_bucket)
    assert all(pab["PublicAccessBlockConfiguration"].values())


class _RecordingService:
    """Stands in for ConveyorService: records what the consumer submits; the kind an
    upload becomes is the installed kinds' answer, as the service's."""

    def __init__(self) -> None:
        self.requests: list[tuple[SubmitRequest, Trigger]] = []
        self.registry = ProcessorRegistry.load()

    def upload_kind(self, key: str, content_type: str | None = None) -> str | None:
        return self.registry.kind_for(key, content_type, upload=True)

    def submit(self, req: SubmitRequest, *, trigger: Trigger, submitted_by: str | None) -> Any:
        self.requests.append((req, trigger))
        return SimpleNamespace(created=True, task=SimpleNamespace(id=f"t{len(self.requests)}"))


def test_an_upload_reaches_the_consumer(moto_endpoint: str, aws_env: None) -> None:
    plan = _plan(moto_endpoint)
    result = init_resources(plan)
    s3, sqs = _client("s3", moto_endpoint), _client("sqs", moto_endpoint)
    s3.put_object(Bucket=plan.input_bucket, Key="in/my clip 视频.mp4", Body=b"not really a video")
    s3.put_object(Bucket=plan.input_bucket, Key="in/readme.txt", Body=b"skip me")

    svc = _RecordingService()
    consumer = S3EventConsumer(
        cast(ConveyorService, svc), result.events_queue_url, sqs, wait_time_s=1
    )
    deadline = time.monotonic() + 10
    while not svc.requests and time.monotonic() < deadline:
        consumer.poll_once()
    consumer.poll_once()  # whatever is left (the test event, the .txt)
    [(req, trigger)] = svc.requests
    assert (req.input_bucket, req.input_key) == (plan.input_bucket, "in/my clip 视频.mp4")
    assert trigger is Trigger.UPLOAD
    assert req.idempotency_key and req.idempotency_key.startswith("upload:")
    left = sqs.get_queue_attributes(
        QueueUrl=result.events_queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    assert left == {
        "ApproximateNumberOfMessages": "0",
        "ApproximateNumberOfMessagesNotVisible": "0",
    }


def test_cli_twice(moto_endpoint: str, aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = _plan(moto_endpoint)
    monkeypatch.setenv("CONVEYOR_AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("DYNAMODB_TABLE", plan.table)
    monkeypatch.setenv("INPUT_BUCKET", plan.input_bucket)
    monkeypatch.setenv("OUTPUT_BUCKET", plan.output_bucket)
    monkeypatch.delenv("SQS_QUEUE_URL", raising=False)
    args = ["init", "--queue-name", plan.queue_name]
    runner = CliRunner()
    first = runner.invoke(aws_app, args)
    assert first.exit_code == 0, first.output
    assert "10 created or updated, 0 already there." in first.output
    assert f"DYNAMODB_TABLE={plan.table}" in first.output
    second = runner.invoke(aws_app, args)
    assert second.exit_code == 0, second.output
    assert "0 created or updated, 10 already there." in second.output


def test_cli_needs_names(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SQS_QUEUE_URL", "CONVEYOR_SQS_QUEUE_NAME", "DYNAMODB_TABLE"):
        monkeypatch.delenv(var, raising=False)
    res = CliRunner().invoke(aws_app, ["init"])
    assert res.exit_code == 1
    assert "SQS_QUEUE_URL" in res.output


def test_a_table_made_before_events_gets_its_outbox_index(moto_endpoint: str) -> None:
    """A deployment from before issue 19: ``ensure_resources`` (``conveyor aws init``)
    adds the task table's ``outbox-index`` and leaves the rest as it was."""
    from conveyor.backends.aws.resources import ensure_resources

    name = f"old-{uuid.uuid4().hex[:8]}"
    ddb = _client("dynamodb", moto_endpoint)
    ddb.create_table(
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[
            {"AttributeName": "task_id", "AttributeType": "S"},
            {"AttributeName": "status_shard", "AttributeType": "S"},
            {"AttributeName": "created_key", "AttributeType": "S"},
        ],
        KeySchema=[{"AttributeName": "task_id", "KeyType": "HASH"}],
        GlobalSecondaryIndexes=[
            {
                "IndexName": "status-index",
                "KeySchema": [
                    {"AttributeName": "status_shard", "KeyType": "HASH"},
                    {"AttributeName": "created_key", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
    )
    ensure_resources(table=name, queue_name=name, region=REGION, endpoint_url=moto_endpoint)
    table = ddb.describe_table(TableName=name)["Table"]
    assert {i["IndexName"] for i in table["GlobalSecondaryIndexes"]} == {
        "status-index",
        "outbox-index",
    }
