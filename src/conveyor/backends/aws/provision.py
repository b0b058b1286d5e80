"""What ``conveyor aws init`` creates, idempotently: everything an AWS deployment needs.

Creates what is missing and leaves what exists alone, so it is safe to run
again (a second run creates nothing):

* the task table and its auxiliary table, the task queue and its dead-letter
  queue, exactly as the engine expects them (:func:`.resources.ensure_resources`);
* the input and output buckets (encrypted, public access blocked);
* the upload-events queue and its dead-letter queue, a queue policy that lets
  only the input bucket (``aws:SourceArn``, ``aws:SourceAccount``) send to it,
  and the input bucket's ``s3:ObjectCreated:*`` notification to it.

S3 events get a queue of their own: the task queue carries the engine's own
messages (one per dispatch), which an S3 event must not be mistaken for.
``deploy/aws/conveyor.yaml`` creates the same resources (plus IAM roles and GPU
workers) with CloudFormation.  The command itself is ``conveyor.cli.aws``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from conveyor.backends.aws.resources import (
    DEFAULT_MAX_RECEIVES,
    dynamodb_client,
    ensure_resources,
    s3_client,
    sqs_client,
)

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

NOTIFICATION_ID = "conveyor-uploads"
UPLOAD_EVENTS_MAX_RECEIVES = 5
RETENTION_S = 14 * 24 * 3600
CREATED, FOUND, UPDATED = "created", "found", "updated"


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
    ddb: Any = dynamodb_client(plan.region, plan.endpoint_url)
    sqs: Any = sqs_client(plan.region, plan.endpoint_url)
    s3 = s3_client(plan.region, plan.endpoint_url)
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
