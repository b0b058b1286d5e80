"""``conveyor aws``: the AWS resources of the ``aws://`` backend and the upload trigger.

``conveyor aws init`` creates what is missing and leaves what exists alone, so
it is safe to run again (a second run creates nothing): the task table and
queues, the buckets, and the upload-events queue with the input bucket's
notification (see :mod:`conveyor.backends.aws.provision`, which does the work).

Names come from options or the environment (the transcoding service's ``SQS_QUEUE_URL``,
``DYNAMODB_TABLE``, ``INPUT_BUCKET``, ``OUTPUT_BUCKET``, ``AWS_REGION``);
credentials from boto3's usual chain.  ``deploy/aws/conveyor.yaml`` creates
the same resources (plus IAM roles and GPU workers) with CloudFormation.
"""

from __future__ import annotations

import typer
from rich.table import Table

from conveyor.cli.common import console, err

# The AWS engine (boto3) is imported by the command that uses it, not with the CLI: every
# other command (``conveyor up``, ``serve``, ``worker`` on SQLite ...) starts a quarter
# of a CPU second sooner without it.

aws_app = typer.Typer(
    help="AWS resources: task queue and table, buckets, upload notifications.",
    no_args_is_help=True,
)

EXIT_ERROR = 1


@aws_app.callback()
def _group() -> None:
    """AWS resources: task queue and table, buckets, upload notifications."""


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
    max_receives: int | None = typer.Option(
        None,
        show_default=False,
        help="Task queue receives before dead-lettering (keep well above max attempts; "
        "default: the engine's DEFAULT_MAX_RECEIVES, 1000).",
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
    from conveyor.backends.aws.provision import (
        CREATED,
        UPDATED,
        InitPlan,
        init_resources,
        queue_name_from_url,
    )
    from conveyor.backends.aws.resources import DEFAULT_MAX_RECEIVES
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
        max_receives=DEFAULT_MAX_RECEIVES if max_receives is None else max_receives,
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
