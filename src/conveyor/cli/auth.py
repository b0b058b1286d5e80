"""``conveyor token …``, ``conveyor worker token`` and the start-up guards for auth.

The token commands talk to a running server with an admin token
(``CONVEYOR_TOKEN``), like every other client command: the first admin token
is the one the server printed at its first start with auth on.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from typing import Any

import typer
from rich.table import Table

from conveyor.cli.common import URL, console, err
from conveyor.cli.common import fail as _fail
from conveyor.remote.client import ClientError, ConveyorClient

token_app = typer.Typer(help="API tokens: create (shown once), list, revoke.", no_args_is_help=True)


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def guard_exposure(settings: Any, insecure: bool) -> None:
    """Without auth, serve only on a loopback address unless ``--insecure`` says otherwise."""
    if settings.auth or is_loopback(settings.api_host) or insecure:
        return
    err.print(
        f"[red]error[/red]: refusing to serve on {settings.api_host} without authentication: "
        "anyone who reaches it could run, cancel and read every task. Set CONVEYOR_AUTH=on "
        "(or --auth), bind 127.0.0.1, or pass --insecure to accept the risk."
    )
    raise typer.Exit(2)


def announce_auth(settings: Any, auth: Any, log: logging.Logger) -> None:
    if not settings.auth:
        log.warning(
            "Authentication is OFF: every caller of %s:%d is an admin%s. "
            "Set CONVEYOR_AUTH=on to require tokens.",
            settings.api_host,
            settings.api_port,
            "" if is_loopback(settings.api_host) else " (--insecure)",
        )
        return
    issued = auth.bootstrap_admin()
    if issued is None:
        log.info("Authentication is on")
        return
    # printed once to the terminal, never logged: only its hash is kept
    err.print(
        "\n[bold]First start with authentication on: an admin token was created.[/bold]\n"
        "It is shown this once; keep it safe (only its hash is stored):\n\n"
        f"    {issued.token}\n\n"
        "Use it as 'Authorization: Bearer <token>', CONVEYOR_TOKEN=<token> for the CLI,\n"
        "or to log in to the console; then create personal tokens with "
        "'conveyor token create'.\n",
        highlight=False,
        soft_wrap=True,
    )


@token_app.command("create")
def token_create(
    role: str = typer.Option(
        ...,
        help="admin, operator, developer, submitter, viewer or worker. Only developer and "
        "admin may run code (container jobs, /train); that code sees only what its sandbox "
        "shows it.",
    ),
    name: str = typer.Option(
        ...,
        help="Who or what holds it (shown in lists and the audit). A submitter's or "
        "developer's files live under '<name>/' in the buckets.",
    ),
    expires: str = typer.Option(None, help="Lifetime, e.g. 30d or 12h (default: never)."),
    secret: list[str] = typer.Option(
        None,
        "--secret",
        help="A worker secret (CONVEYOR_SECRET_<NAME>) this token's jobs may ask for "
        "(repeatable; roles that run code only; the admin may ask for any).",
    ),
    url: str = URL,
) -> None:
    """Create a token and print it once."""
    body: dict[str, Any] = {"name": name, "role": role, "expires": expires}
    if secret:
        body["secrets"] = secret
    try:
        out = ConveyorClient(url).request("POST", "/api/tokens", json=body)
    except ClientError as exc:
        _fail(exc)
        return
    granted = f", secrets {', '.join(out['secrets'])}" if out.get("secrets") else ""
    err.print(f"token {out['id']} ({out['role']}{granted}) for {out['name']}; shown once:")
    console.print(out["token"], highlight=False, soft_wrap=True)


@token_app.command("list")
def token_list(as_json: bool = typer.Option(False, "--json"), url: str = URL) -> None:
    """Tokens with their role, state and expiry (never their values)."""
    try:
        rows = ConveyorClient(url).request("GET", "/api/tokens")
    except ClientError as exc:
        _fail(exc)
        return
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table("id", "name", "role", "state", "created", "expires", "worker", "secrets")
    for r in rows:
        state = "active" if r["active"] else ("revoked" if r["revoked_at"] else "expired")
        table.add_row(
            r["id"],
            r["name"],
            r["role"],
            state,
            (r["created_at"] or "")[:19],
            (r["expires_at"] or "never")[:19],
            r.get("worker_id") or "",
            ",".join(r.get("secrets") or []),
        )
    console.print(table)


@token_app.command("revoke")
def token_revoke(token_id: str, url: str = URL) -> None:
    """Revoke a token by its id (the middle part of cvy_<id>_…)."""
    try:
        out = ConveyorClient(url).request("DELETE", f"/api/tokens/{token_id}")
    except ClientError as exc:
        _fail(exc)
        return
    console.print(f"token {out['id']} ({out['name']}) revoked")


def worker_token(
    name: str = typer.Option(None, help="Only a worker of this name may use it."),
    pool: str = typer.Option(None, help="The pool the worker joins."),
    ttl: str = typer.Option("5m", help="How long it stays valid."),
    url: str = URL,
) -> None:
    """Create a one-time enrollment token for a new worker (admin)."""
    try:
        out = ConveyorClient(url).request(
            "POST", "/api/workers/enrollment-tokens", json={"name": name, "pool": pool, "ttl": ttl}
        )
    except ClientError as exc:
        _fail(exc)
        return
    err.print(f"enrollment token, valid once until {out['expires_at']}:")
    console.print(out["token"], highlight=False, soft_wrap=True)
