"""``conveyor aws``: the AWS resources of the ``aws://`` backend and the upload trigger.

``conveyor aws init`` creates what is missing and leaves what exists alone, so
it is safe to run again (a second run creates nothing):

* the task table and its auxiliary table, the task queue and its dead-letter
  queue, exactly as the backend expects them
  (:func:`conveyor.backends.aws_resources.ensure_resources`);
* the input and output buckets (encrypted, public access blocked);
* the upload-events queue and its dead-letter queue, a queue policy that lets
  only the input bucket (``aws:SourceArn``, ``aws:SourceAccount``) send to it,
  and the input bucket's ``s3:ObjectCreated:*`` notification to it.

S3 events get a queue of their own: the task queue carries the backend's own
messages (one per dispatch), which an S3 event must not be mistaken for.

Names come from options or the environment (seed 002's ``SQS_QUEUE_URL``,
``DYNAMODB_TABLE``, ``INPUT_BUCKET``, ``OUTPUT_BUCKET``, ``AWS_REGION``);
credentials from boto3's usual chain.  ``deploy/aws/conveyor.yaml`` creates
the same resources (plus IAM roles and GPU workers) with CloudFormation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import typer
from rich.console import Console
from rich.table import Table

from conveyor.backends.aws_resources import DEFAULT_MAX_RECEIVES

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

aws_app = typer.Typer(
    help="AWS resources: task queue and table, buckets, upload notifications.",
    no_args_is_help=True,
)
console = Console()
err = Console(stderr=True)

NOTIFICATION_ID = "conveyor-uploads"
UPLOAD_EVENTS_MAX_RECEIVES = 5
RETENTION_S = 14 * 24 * 3600
EXIT_ERROR = 1

CREATED, FOUND, UPDATED = "created", "found", "updated"


@aws_app.callback()
def _group() -> None:
    """AWS resources: task queue and table, buckets, upload notifications."""


@dataclass
class Step:
    kind: str
    name: str
    status: str


@dataclass
class InitPlan:
    region: str
    queue_name: str
    table: str
    input_bucket: str
    output_bucket: str
    events_queue_name: str
    endpoint_url: str | None = None
    max_receives: int = DEFAULT_MAX_RECEIVES
    events_max_receives: int = UPLOAD_EVENTS_MAX_RECEIVES
    notify: bool = True


@dataclass
class InitResult:
    steps: list[Step]
    queue_url: str
    events_queue_url: str

    @property
    def created(self) -> list[Step]:
        return [s for s in self.steps if s.status != FOUND]


def queue_name_from_url(url: str) -> str:
    name = urlparse(url).path.rstrip("/").rsplit("/", 1)[-1]
    if not name:
        raise ValueError(f"not an SQS queue URL: {url!r}")
    return name


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _s3_client(region: str, endpoint_url: str | None) -> S3Client:
    import boto3
    from botocore.config import Config

    style: Any = "path" if endpoint_url else "auto"
    client: S3Client = boto3.client(
        "s3",
        region_name=region,
        endpoint_url=endpoint_url,
        config=Config(
            retries={"max_attempts": 5, "mode": "standard"}, s3={"addressing_style": style}
        ),
    )
    return client


# -- table and task queue ---------------------------------------------------------------
def _table_exists(ddb: Any, name: str) -> bool:
    try:
        ddb.describe_table(TableName=name)
    except Exception as exc:
        if _code(exc) == "ResourceNotFoundException":
            return False
        raise
    return True


def _queue_url(sqs: Any, name: str) -> str | None:
    try:
        return str(sqs.get_queue_url(QueueName=name)["QueueUrl"])
    except Exception as exc:
        if _code(exc) in ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"):
            return None
        raise


def _queue_arn(sqs: Any, url: str) -> str:
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    return str(attrs["Attributes"]["QueueArn"])


def _ensure_backend(plan: InitPlan, ddb: Any, sqs: Any, steps: list[Step]) -> str:
    from conveyor.backends.aws_resources import ensure_resources

    aux = f"{plan.table}-aux"
    dlq = f"{plan.queue_name}-dlq"
    before = {
        ("table", plan.table): _table_exists(ddb, plan.table),
        ("table", aux): _table_exists(ddb, aux),
        ("queue", dlq): _queue_url(sqs, dlq) is not None,
        ("queue", plan.queue_name): _queue_url(sqs, plan.queue_name) is not None,
    }
    if all(before.values()):
        url = _queue_url(sqs, plan.queue_name)
        assert url is not None
    else:
        url = ensure_resources(
            table=plan.table,
            queue_name=plan.queue_name,
            region=plan.region,
            endpoint_url=plan.endpoint_url,
            max_receives=plan.max_receives,
        )
    for (kind, name), existed in before.items():
        steps.append(Step(kind, name, FOUND if existed else CREATED))
    return url


# -- buckets ----------------------------------------------------------------------------
def _ensure_bucket(s3: S3Client, bucket: str, region: str, steps: list[Step]) -> None:
    try:
        s3.head_bucket(Bucket=bucket)
        steps.append(Step("bucket", bucket, FOUND))
        return
    except Exception as exc:
        if _code(exc) not in ("404", "NoSuchBucket", "NotFound"):
            raise
    try:
        try:
            s3.create_bucket(
                Bucket=bucket,
                CreateBucketConfiguration={"LocationConstraint": region},  # type: ignore[typeddict-item]
            )
        except Exception as exc:
            # S3's original region takes no location constraint: ask without one
            if _code(exc) not in (
                "InvalidLocationConstraint",
                "IllegalLocationConstraintException",
            ):
                raise
            s3.create_bucket(Bucket=bucket)
    except Exception as exc:
        if _code(exc) == "BucketAlreadyOwnedByYou":
            steps.append(Step("bucket", bucket, FOUND))
            return
        raise
    s3.put_public_access_block(
        Bucket=bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
    s3.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )
    steps.append(Step("bucket", bucket, CREATED))


# -- upload events ----------------------------------------------------------------------
def events_queue_policy(queue_arn: str, bucket: str) -> dict[str, Any]:
    """Only ``bucket``, in the queue's own account, may send to the queue."""
    parts = queue_arn.split(":")
    partition, account = parts[1], parts[4]
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "AllowInputBucketNotifications",
                "Effect": "Allow",
                "Principal": {"Service": "s3.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
                "Condition": {
                    "ArnLike": {"aws:SourceArn": f"arn:{partition}:s3:::{bucket}"},
                    "StringEquals": {"aws:SourceAccount": account},
                },
            }
        ],
    }


def _ensure_events_queue(plan: InitPlan, sqs: Any, steps: list[Step]) -> tuple[str, str]:
    dlq_name = f"{plan.events_queue_name}-dlq"
    dlq_url = _queue_url(sqs, dlq_name)
    if dlq_url is None:
        dlq_url = str(
            sqs.create_queue(
                QueueName=dlq_name, Attributes={"MessageRetentionPeriod": str(RETENTION_S)}
            )["QueueUrl"]
        )
        steps.append(Step("queue", dlq_name, CREATED))
    else:
        steps.append(Step("queue", dlq_name, FOUND))
    url = _queue_url(sqs, plan.events_queue_name)
    if url is None:
        redrive = {
            "deadLetterTargetArn": _queue_arn(sqs, dlq_url),
            "maxReceiveCount": str(plan.events_max_receives),
        }
        url = str(
            sqs.create_queue(
                QueueName=plan.events_queue_name,
                Attributes={
                    "RedrivePolicy": json.dumps(redrive),
                    "MessageRetentionPeriod": str(RETENTION_S),
                    "ReceiveMessageWaitTimeSeconds": "20",
                    "VisibilityTimeout": "60",
                },
            )["QueueUrl"]
        )
        steps.append(Step("queue", plan.events_queue_name, CREATED))
    else:
        steps.append(Step("queue", plan.events_queue_name, FOUND))
    arn = _queue_arn(sqs, url)
    policy = events_queue_policy(arn, plan.input_bucket)
    current = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"])
    raw = (current.get("Attributes") or {}).get("Policy")
    if raw and json.loads(raw) == policy:
        steps.append(Step("queue policy", plan.events_queue_name, FOUND))
    else:
        sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps(policy)})
        steps.append(Step("queue policy", plan.events_queue_name, UPDATED if raw else CREATED))
    return url, arn


def _ensure_notification(s3: S3Client, bucket: str, queue_arn: str, steps: list[Step]) -> None:
    current: dict[str, Any] = dict(s3.get_bucket_notification_configuration(Bucket=bucket))
    current.pop("ResponseMetadata", None)
    queues: list[dict[str, Any]] = list(current.get("QueueConfigurations") or [])
    for q in queues:
        if q.get("QueueArn") == queue_arn and "s3:ObjectCreated:*" in (q.get("Events") or []):
            steps.append(Step("notification", f"{bucket} -> {queue_arn}", FOUND))
            return
    # keep every other notification the bucket has; replace only our own
    queues = [q for q in queues if q.get("Id") != NOTIFICATION_ID]
    queues.append({"Id": NOTIFICATION_ID, "QueueArn": queue_arn, "Events": ["s3:ObjectCreated:*"]})
    current["QueueConfigurations"] = queues
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration=current,  # type: ignore[arg-type]
    )
    steps.append(Step("notification", f"{bucket} -> {queue_arn}", CREATED))


def init_resources(plan: InitPlan) -> InitResult:
    """Create what is missing; every step says whether it created or found its resource."""
    from conveyor.backends.aws_resources import dynamodb_client, sqs_client

    ddb: Any = dynamodb_client(plan.region, plan.endpoint_url)
    sqs: Any = sqs_client(plan.region, plan.endpoint_url)
    s3 = _s3_client(plan.region, plan.endpoint_url)
    steps: list[Step] = []
    try:
        queue_url = _ensure_backend(plan, ddb, sqs, steps)
        for bucket in (plan.input_bucket, plan.output_bucket):
            _ensure_bucket(s3, bucket, plan.region, steps)
        events_url, events_arn = _ensure_events_queue(plan, sqs, steps)
        if plan.notify:
            _ensure_notification(s3, plan.input_bucket, events_arn, steps)
    finally:
        ddb.close()
        sqs.close()
        s3.close()
    return InitResult(steps=steps, queue_url=queue_url, events_queue_url=events_url)


# -- the command ------------------------------------------------------------------------
@aws_app.command()
def init(
    region: str = typer.Option(
        None, envvar=["AWS_REGION", "AWS_DEFAULT_REGION"], help="AWS region.", show_default=False
    ),
    queue_url: str = typer.Option(
        None,
        "--queue-url",
        envvar=["SQS_QUEUE_URL", "CONVEYOR_SQS_QUEUE_URL"],
        help="Task queue URL (its name is used).",
        show_default=False,
    ),
    queue_name: str = typer.Option(
        None, "--queue-name", envvar="CONVEYOR_SQS_QUEUE_NAME", help="Task queue name."
    ),
    table: str = typer.Option(
        None,
        "--table",
        envvar=["DYNAMODB_TABLE", "CONVEYOR_DYNAMODB_TABLE"],
        help="Task table name.",
        show_default=False,
    ),
    input_bucket: str = typer.Option(
        None, envvar=["INPUT_BUCKET", "CONVEYOR_INPUT_BUCKET"], help="Input bucket (uploads)."
    ),
    output_bucket: str = typer.Option(
        None, envvar=["OUTPUT_BUCKET", "CONVEYOR_OUTPUT_BUCKET"], help="Output bucket."
    ),
    events_queue: str = typer.Option(
        None,
        "--events-queue-name",
        envvar="CONVEYOR_S3_EVENTS_QUEUE_NAME",
        help="Queue for the input bucket's upload events (<queue>-upload-events).",
    ),
    max_receives: int = typer.Option(
        DEFAULT_MAX_RECEIVES,
        help="Task queue receives before dead-lettering (keep well above max attempts).",
    ),
    notify: bool = typer.Option(
        True, "--notify/--no-notify", help="Configure the input bucket's upload notification."
    ),
    endpoint_url: str = typer.Option(
        None,
        envvar="CONVEYOR_AWS_ENDPOINT_URL",
        help="Another endpoint (moto, LocalStack) instead of AWS.",
    ),
) -> None:
    """Create the queues, table, buckets and upload notification (idempotent)."""
    from conveyor.config import load_settings

    if not region:
        err.print("[red]error[/red]: no region: set AWS_REGION or pass --region")
        raise typer.Exit(EXIT_ERROR)
    if queue_name is None and queue_url:
        try:
            queue_name = queue_name_from_url(queue_url)
        except ValueError as exc:
            err.print(f"[red]error[/red]: {exc}")
            raise typer.Exit(EXIT_ERROR) from None
    if not queue_name or not table:
        err.print(
            "[red]error[/red]: name the task queue (SQS_QUEUE_URL or --queue-name) "
            "and the table (DYNAMODB_TABLE or --table)"
        )
        raise typer.Exit(EXIT_ERROR)
    if input_bucket is None or output_bucket is None:
        settings = load_settings()
        input_bucket = input_bucket or settings.input_bucket
        output_bucket = output_bucket or settings.output_bucket
    plan = InitPlan(
        region=region,
        queue_name=queue_name,
        table=table,
        input_bucket=input_bucket,
        output_bucket=output_bucket,
        events_queue_name=events_queue or f"{queue_name}-upload-events",
        endpoint_url=endpoint_url,
        max_receives=max_receives,
        notify=notify,
    )
    try:
        result = init_resources(plan)
    except Exception as exc:
        err.print(f"[red]error[/red]: {exc}")
        raise typer.Exit(EXIT_ERROR) from None

    out = Table("resource", "name", "status")
    for step in result.steps:
        color = "green" if step.status == CREATED else "yellow" if step.status == UPDATED else ""
        out.add_row(step.kind, step.name, f"[{color}]{step.status}[/{color}]" if color else "found")
    console.print(out)
    n = len(result.created)
    console.print(f"{n} created or updated, {len(result.steps) - n} already there.")
    console.print("Configuration for Conveyor:")
    for line in (
        f"AWS_REGION={plan.region}",
        f"SQS_QUEUE_URL={result.queue_url}",
        f"DYNAMODB_TABLE={plan.table}",
        f"INPUT_BUCKET={plan.input_bucket}",
        f"OUTPUT_BUCKET={plan.output_bucket}",
        f"CONVEYOR_S3_EVENTS_QUEUE_URL={result.events_queue_url}",
    ):
        console.print(line, highlight=False, soft_wrap=True)
