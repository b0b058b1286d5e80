"""The ``conveyor`` command: run the service, or talk to a running one over HTTP.

One module per command group: ``serve`` (``up``, ``serve``), ``worker`` (``worker``,
``worker token``), ``tasks`` (the client commands), ``auth`` (``token``), ``db`` and
``aws``; ``common`` holds what they share.  A kind adds commands of its own through the
``conveyor.cli`` entry point group (``conveyor run``: the container kind's).
"""

from __future__ import annotations

import sys

import typer

from conveyor.cli import events, serve, tasks
from conveyor.cli.auth import token_app
from conveyor.cli.aws import aws_app
from conveyor.cli.common import err
from conveyor.cli.db import db_app
from conveyor.cli.worker import worker_app

app = typer.Typer(
    help="Conveyor: a self-hosted job service for GPU work.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(tasks.queue_app, name="queue")
app.add_typer(db_app, name="db")
app.add_typer(aws_app, name="aws")
app.add_typer(token_app, name="token")
app.add_typer(worker_app, name="worker")
app.add_typer(events.webhooks_app, name="webhooks")
for command in (
    serve.up,
    serve.serve,
    tasks.submit,
    tasks.tasks,
    tasks.show,
    tasks.cancel,
    tasks.retry,
    tasks.logs,
    tasks.health,
    tasks.status,
    events.events,
):
    app.command()(command)


def _add_commands() -> None:
    """Commands of the installed kinds: each ``conveyor.cli`` entry point is a function
    that adds its commands to ``app`` (``conveyor run``: the container kind's)."""
    import logging
    from importlib.metadata import entry_points

    for ep in entry_points(group="conveyor.cli"):
        try:
            ep.load()(app)
        except Exception:  # a broken plug-in must not take the CLI down
            logging.getLogger(__name__).exception("could not load commands %r", ep.name)


_add_commands()


def main() -> None:
    from conveyor.errors import ConveyorError

    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except ConveyorError as exc:  # bad config, unreachable or outdated backend, ...
        err.print(f"[red]error[/red] ({exc.code}): {exc.message}")
        sys.exit(2)
