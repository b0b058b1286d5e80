"""The AWS engine's clients and resources: what the ``aws://`` backend uses (idempotent).

* the task table (``DYNAMODB_TABLE``): hash key ``task_id``; ``date-index``
  (``date_partition`` + ``created_key``) and ``status-index``
  (``status_shard`` + ``created_key``), both projecting everything.
  ``created_key`` is ``<created_at ISO-8601 UTC, microseconds>#<task id>``:
  the transcoding service sorted on ``created_at`` alone, which leaves ties in an undefined
  order; appending the id makes the range key unique, so keyset paging is
  exact.  ``status_shard`` is ``<status>#<n>`` with ``n = crc32(id) % shards``
  so that one hot status (thousands of ``pending`` tasks) is spread over
  several index partitions instead of throttling one.
* ``outbox-index`` (``outbox_shard``, keys only): the tasks whose events are not yet
  sequenced (``events.py``); added to a table made before it by ``ensure_resources``.
* an auxiliary table ``<table>-aux`` (``pk`` + ``sk``) for idempotency keys,
  worker records (with a TTL) and task log lines.
* the SQS queue and its dead-letter queue ``<queue>-dlq`` (redrive after
  ``max_receives`` receives).

``ensure_resources`` creates them; ``conveyor aws init`` (``provision.py``) calls it
and creates the buckets and the upload-events queue too.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_sqs import SQSClient

# SQS counts every receive: claims that pass a message over (other kind, or not
# the best of the batch) and wait_for_work's peeks count too, so the redrive
# threshold is a backstop against poison messages, not the attempt limit
# (``max_attempts`` is enforced on the DynamoDB record).
DEFAULT_MAX_RECEIVES = 1000

BOTO_CONFIG = Config(
    retries={"max_attempts": 5, "mode": "standard"},
    max_pool_connections=50,
)


def dynamodb_client(
    region: str, endpoint_url: str | None, *, max_attempts: int | None = None
) -> DynamoDBClient:
    """``max_attempts``: fewer tries than botocore's 5, whose back-off grows to seconds,
    for a caller that retries on its own (the events' sequencer)."""
    config = BOTO_CONFIG
    if max_attempts is not None:
        config = BOTO_CONFIG.merge(
            Config(retries={"max_attempts": max_attempts, "mode": "standard"})
        )
    client: DynamoDBClient = boto3.client(
        "dynamodb", region_name=region, endpoint_url=endpoint_url, config=config
    )
    return client


def sqs_client(region: str, endpoint_url: str | None) -> SQSClient:
    client: SQSClient = boto3.client(
        "sqs", region_name=region, endpoint_url=endpoint_url, config=BOTO_CONFIG
    )
    return client


def s3_client(region: str, endpoint_url: str | None) -> S3Client:
    """For ``conveyor aws init``'s buckets; path-style addressing on another endpoint."""
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


def _create_table(ddb: DynamoDBClient, **kwargs: Any) -> None:
    try:
        ddb.create_table(BillingMode="PAY_PER_REQUEST", **kwargs)
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ResourceInUseException":
            raise
    ddb.get_waiter("table_exists").wait(
        TableName=kwargs["TableName"], WaiterConfig={"Delay": 1, "MaxAttempts": 60}
    )


# tasks with events not yet sequenced (the engine's outbox, backends/aws/events.py): a
# sparse index, keys only
OUTBOX_INDEX_SPEC: Any = {
    "IndexName": "outbox-index",
    "KeySchema": [{"AttributeName": "outbox_shard", "KeyType": "HASH"}],
    "Projection": {"ProjectionType": "KEYS_ONLY"},
}


def _ensure_outbox_index(ddb: DynamoDBClient, table: str) -> None:
    """Add ``outbox-index`` to a task table made before events (issue 19).  Until it is
    there (AWS builds it in minutes) events wait in their task items, none lost."""
    described = ddb.describe_table(TableName=table)["Table"]
    names = {i["IndexName"] for i in described.get("GlobalSecondaryIndexes", [])}
    if OUTBOX_INDEX_SPEC["IndexName"] in names:
        return
    ddb.update_table(
        TableName=table,
        AttributeDefinitions=[{"AttributeName": "outbox_shard", "AttributeType": "S"}],
        GlobalSecondaryIndexUpdates=[{"Create": OUTBOX_INDEX_SPEC}],
    )


def ensure_resources(
    *,
    table: str,
    queue_name: str,
    region: str,
    endpoint_url: str | None = None,
    max_receives: int = DEFAULT_MAX_RECEIVES,
) -> str:
    """Create the tables and queues if missing; return the queue URL."""
    ddb = dynamodb_client(region, endpoint_url)
    sqs = sqs_client(region, endpoint_url)
    try:
        _create_table(
            ddb,
            TableName=table,
            AttributeDefinitions=[
                {"AttributeName": "task_id", "AttributeType": "S"},
                {"AttributeName": "date_partition", "AttributeType": "S"},
                {"AttributeName": "status_shard", "AttributeType": "S"},
                {"AttributeName": "created_key", "AttributeType": "S"},
                {"AttributeName": "outbox_shard", "AttributeType": "S"},
            ],
            KeySchema=[{"AttributeName": "task_id", "KeyType": "HASH"}],
            GlobalSecondaryIndexes=[
                {
                    "IndexName": "date-index",
                    "KeySchema": [
                        {"AttributeName": "date_partition", "KeyType": "HASH"},
                        {"AttributeName": "created_key", "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "ALL"},
                },
                {
                    "IndexName": "status-index",
                    "KeySchema": [
                        {"AttributeName": "status_shard", "KeyType": "HASH"},
                        {"AttributeName": "created_key", "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "ALL"},
                },
                OUTBOX_INDEX_SPEC,
            ],
        )
        _ensure_outbox_index(ddb, table)
        aux = f"{table}-aux"
        _create_table(
            ddb,
            TableName=aux,
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
            ],
            KeySchema=[
                {"AttributeName": "pk", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"},
            ],
        )
        try:
            ddb.update_time_to_live(
                TableName=aux,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires"},
            )
        except ClientError as exc:  # already enabled
            if exc.response["Error"]["Code"] != "ValidationException":
                raise

        dlq_url = sqs.create_queue(QueueName=f"{queue_name}-dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        queue_url = sqs.create_queue(
            QueueName=queue_name,
            Attributes={
                "RedrivePolicy": json.dumps(
                    {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receives)}
                ),
                "MessageRetentionPeriod": str(14 * 24 * 3600),
            },
        )["QueueUrl"]
        return queue_url
    finally:
        ddb.close()
        sqs.close()
