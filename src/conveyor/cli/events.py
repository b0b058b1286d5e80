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
