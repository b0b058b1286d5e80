"""What the commands share: the ``--url`` option, the two consoles, the settings of a
process the CLI starts, and how a refused request ends a command."""

from __future__ import annotations

from typing import Any, NoReturn

import typer
from rich.console import Console

from conveyor.remote.client import ClientError, ConveyorClient

console = Console()
err = Console(stderr=True)

URL = typer.Option(
    "http://127.0.0.1:9999", "--url", envvar="CONVEYOR_URL", help="Conveyor API to talk to."
)


def client(url: str) -> ConveyorClient:
    return ConveyorClient(url)


def fail(exc: ClientError) -> NoReturn:
    """Say what the server refused; exit 2 for the caller's mistake (4xx), else 1."""
    err.print(f"[red]error[/red] ({exc.code}): {exc.message}")
    raise typer.Exit(2 if exc.status and exc.status < 500 else 1)


def load_settings(**overrides: Any) -> Any:
    """The settings of a process this command runs (server or worker), logging set up."""
    from conveyor.config import load_settings
    from conveyor.logs import setup_logging

    settings = load_settings(**overrides)
    setup_logging(settings.log_level, settings.log_format)
    return settings
