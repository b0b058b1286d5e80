"""``conveyor events``: the event stream (``GET /api/events``), one line per event.

``-f`` keeps following (reconnecting with Last-Event-ID after a dropped connection);
without it the command prints what is there and ends.  ``--json`` prints each event's
JSON (what a webhook receives), one per line, for scripts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import typer
from rich.table import Table

from conveyor.cli.common import URL, console, err
from conveyor.cli.common import client as _client
from conveyor.cli.common import fail as _fail
from conveyor.remote.client import ClientError, ConveyorClient

_COLOURS = {"completed": "green", "failed": "red", "cancelled": "yellow", "retrying": "magenta"}


def _stream(client: ConveyorClient, params: dict[str, Any]) -> Iterator[tuple[int, str, Any]]:
    """``(id, type, data)`` of each server-sent event until the server ends the stream."""
    try:
        with client.http.stream("GET", "/api/events", params=params, timeout=None) as r:
            if r.status_code >= 400:
                r.read()
                client._check(r)
            seq, event, data = 0, "message", list[str]()
            for line in r.iter_lines():
                if line == "":
                    if data:
                        yield seq, event, json.loads("\n".join(data))
                    event, data = "message", []
                elif line.startswith("id:"):
                    text = line[3:].strip()
                    seq = int(text) if text.isdigit() else seq
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
    except httpx.TransportError as exc:
        raise ClientError(
            0, "unreachable", f"cannot reach Conveyor at {client.url}: {exc}"
        ) from None


def events(
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep following new events."),
    since: int = typer.Option(
        None,
        help="Start after this event id (0: every event kept); default: now with -f, "
        "else from the start.",
    ),
    kind: list[str] = typer.Option(None, "--kind", help="Only these kinds (repeat or a,b)."),
    status: list[str] = typer.Option(None, "--status", help="Only tasks in these states."),
    as_json: bool = typer.Option(False, "--json", help="One event's JSON per line."),
    url: str = URL,
) -> None:
    """Print task events (queued, started, retrying, completed, failed, cancelled)."""
    client = _client(url)
    params: dict[str, Any] = {"follow": "true" if follow else "false"}
    if kind:
        params["kind"] = kind
    if status:
        params["status"] = status
    position = since if since is not None else (None if follow else 0)
    while True:
        if position is not None:
            params["since"] = position
        try:
            for seq, kind_of, data in _stream(client, params):
                position = seq
                _print(kind_of, data, as_json)
        except ClientError as exc:
            if not follow or exc.status:
                _fail(exc)
            err.print(f"[yellow]reconnecting[/yellow]: {exc.message}")
        if not follow:
            return
        time.sleep(1.0)


def _print(kind_of: str, data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(data, ensure_ascii=False), flush=True)
        return
    d = data.get("data", {})
    colour = _COLOURS.get(kind_of, "cyan")
    extra = ""
    if d.get("external_id"):
        extra += f" ext={d['external_id']}"
    if d.get("worker_id") and kind_of == "started":
        extra += f" worker={d['worker_id']} attempt={d.get('attempt')}"
    if d.get("error"):
        extra += f" error={d['error']}"
    console.print(
        f"{data.get('seq', '')!s:>6} {data.get('timestamp', '')[:23]} "
        f"[{colour}]{kind_of:<9}[/{colour}] {d.get('task_id', '')} {d.get('kind', '')}{extra}",
        highlight=False,
    )


webhooks_app = typer.Typer(
    help="Webhook subscriptions and their delivery logs (admins and operators).",
    no_args_is_help=True,
)


@webhooks_app.command("create")
def webhook_create(
    target: str = typer.Argument(..., help="The URL events are POSTed to."),
    event: list[str] = typer.Option(None, "--event", help="Only these types (repeat or a,b)."),
    kind: list[str] = typer.Option(None, "--kind", help="Only these kinds (repeat or a,b)."),
    description: str = typer.Option("", help="What it is for."),
    url: str = URL,
) -> None:
    """Subscribe a URL; prints the signing secret, shown this once."""
    body = {
        "url": target,
        "events": [e.strip() for raw in event or [] for e in raw.split(",") if e.strip()],
        "kinds": [k.strip() for raw in kind or [] for k in raw.split(",") if k.strip()],
        "description": description,
    }
    try:
        hook = _client(url).request("POST", "/api/webhooks", json=body)
    except ClientError as exc:
        _fail(exc)
        return
    console.print(f"webhook [bold]{hook['id']}[/bold] → {hook['url']}", highlight=False)
    console.print(f"secret (shown once): {hook['secret']}", highlight=False)


@webhooks_app.command("list")
def webhook_list(url: str = URL) -> None:
    """The subscriptions."""
    try:
        res = _client(url).request("GET", "/api/webhooks")
    except ClientError as exc:
        _fail(exc)
        return
    table = Table("id", "url", "events", "kinds", "description")
    for h in res["webhooks"]:
        table.add_row(
            h["id"],
            h["url"],
            ",".join(h["events"]) or "all",
            ",".join(h["kinds"]) or "all",
            h["description"],
        )
    console.print(table)


@webhooks_app.command("delete")
def webhook_delete(webhook_id: str, url: str = URL) -> None:
    """Delete a subscription and its delivery log."""
    try:
        _client(url).request("DELETE", f"/api/webhooks/{webhook_id}")
    except ClientError as exc:
        _fail(exc)
        return
    console.print(f"{webhook_id}: deleted")


@webhooks_app.command("deliveries")
def webhook_deliveries(webhook_id: str, limit: int = typer.Option(50), url: str = URL) -> None:
    """A subscription's delivery log, newest event first."""
    try:
        res = _client(url).request(
            "GET", f"/api/webhooks/{webhook_id}/deliveries", params={"limit": limit}
        )
    except ClientError as exc:
        _fail(exc)
        return
    table = Table("delivery", "event", "task", "state", "tries", "http", "ms", "next try / error")
    for d in res["deliveries"]:
        latency = d.get("last_latency_ms")
        table.add_row(
            d["id"],
            f"{d['event_type']} #{d['event_seq']}",
            d["task_id"],
            d["state"],
            str(d["attempts"]),
            str(d["last_status"] or "-"),
            f"{latency:.0f}" if latency is not None else "-",
            d.get("last_error") or (d.get("next_at") or "")[:19],
        )
    console.print(table)


@webhooks_app.command("redeliver")
def webhook_redeliver(webhook_id: str, delivery_id: str, url: str = URL) -> None:
    """Send a delivery again (same event id)."""
    try:
        d = _client(url).request(
            "POST", f"/api/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver"
        )
    except ClientError as exc:
        _fail(exc)
        return
    console.print(f"{d['id']}: {d['state']}, due now")
