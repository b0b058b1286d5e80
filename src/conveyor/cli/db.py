"""``conveyor db``: the database schema of the PostgreSQL backend.

``conveyor db upgrade`` applies the schema migrations this Conveyor ships
that the database lacks (safe to run on several hosts at once);
``conveyor db status`` shows where the database stands and exits non-zero
when it is not at the version this Conveyor needs, so a deploy script can
check before it starts workers.  The SQLite backend manages its schema by
itself and needs neither.
"""

from __future__ import annotations

import typer

from conveyor.cli.common import console, err
from conveyor.errors import ConveyorError

db_app = typer.Typer(help="Database schema: status and upgrades.", no_args_is_help=True)

BACKEND = typer.Option(
    ...,
    "--backend",
    envvar="CONVEYOR_BACKEND_URL",
    help="Backend URL, e.g. postgresql://user:pass@host:5432/conveyor.",
    show_default=False,
)

EXIT_ERROR = 1  # could not reach the database, bad URL, ... (2 is click's usage error)
EXIT_BEHIND = 3  # `status`: migrations are pending
EXIT_AHEAD = 4  # `status`: the database is newer than this Conveyor


def _is_sqlite(url: str) -> bool:
    return url.startswith("sqlite:")


def _check_url(url: str) -> None:
    if not url.startswith(("postgresql://", "postgres://")):
        err.print(f"[red]error[/red]: unsupported backend URL for `conveyor db`: {_redact(url)}")
        raise typer.Exit(EXIT_ERROR)


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}"))


def _fail(exc: BaseException) -> None:
    err.print(f"[red]error[/red]: {exc}")
    raise typer.Exit(EXIT_ERROR)


@db_app.command()
def upgrade(backend: str = BACKEND) -> None:
    """Apply the schema migrations the database lacks (idempotent)."""
    if _is_sqlite(backend):
        console.print("SQLite backend: the schema is created and kept up to date on open.")
        return
    _check_url(backend)
    import psycopg

    from conveyor.backends.postgres import latest_version
    from conveyor.backends.postgres import upgrade as apply

    try:
        applied = apply(backend)
    except (ConveyorError, psycopg.Error) as exc:
        _fail(exc)
        return
    if not applied:
        console.print(f"Database schema already at version {latest_version()}; nothing to do.")
        return
    for m in applied:
        console.print(f"applied {m.version:04d}_{m.name}")
    console.print(f"Database schema now at version {applied[-1].version}.")


@db_app.command()
def status(backend: str = BACKEND) -> None:
    """Show the schema version; exit 3 if migrations are pending, 4 if the database is newer."""
    if _is_sqlite(backend):
        console.print("SQLite backend: the schema is created and kept up to date on open.")
        return
    _check_url(backend)
    import psycopg

    from conveyor.backends.postgres import schema_status

    try:
        st = schema_status(backend)
    except (ConveyorError, psycopg.Error) as exc:
        _fail(exc)
        return
    console.print(f"database schema version: {st.current or 'none'}")
    console.print(f"this Conveyor needs:     {st.latest}")
    if st.current > st.latest:
        err.print(
            f"[red]the database is newer than this Conveyor (version {st.current} > "
            f"{st.latest})[/red]: upgrade Conveyor"
        )
        raise typer.Exit(EXIT_AHEAD)
    if st.pending:
        for m in st.pending:
            console.print(f"pending: {m.version:04d}_{m.name}")
        err.print("run `conveyor db upgrade` to apply them")
        raise typer.Exit(EXIT_BEHIND)
    console.print("up to date")
