"""The client commands: ``submit``, ``tasks``, ``show``, ``cancel``, ``retry``, ``logs``,
``queue status|clear``, ``health`` and ``status``.  They talk to a running server over
HTTP (``--url``), never to a database."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from conveyor.cli.common import URL, console, err
from conveyor.cli.common import client as _client
from conveyor.cli.common import fail as _fail
from conveyor.remote.client import ClientError, ConveyorClient

queue_app = typer.Typer(help="Queue status and clearing.", no_args_is_help=True)


def _split_types(types: list[str] | None) -> list[str] | None:
    if not types:
        return None
    return [t.strip() for raw in types for t in raw.split(",") if t.strip()]


@dataclass
class _Kinds:
    """What the server's kinds take: each one's params, and which a file goes to."""

    default: str | None
    params: dict[str, list[str]]
    pick: Callable[[str], str | None]  # a file's name -> the kind that takes it, or None


def _kinds(client: ConveyorClient) -> _Kinds:
    """The server's kinds (``GET /api/kinds``); the kinds installed here when the server
    is older than that path."""
    try:
        known = client.request("GET", "/api/kinds")
    except ClientError as exc:
        if exc.status != 404:
            raise
        from conveyor.processors import ProcessorRegistry

        registry = ProcessorRegistry.load()
        params = {k: list(p.params_model.model_fields) for k, p in registry.items()}
        return _Kinds(None, params, registry.kind_for)
    default = known.get("default")
    kinds = known.get("kinds") or []

    def pick(key: str) -> str | None:
        """The kind that takes a file called ``key``, the default kind where several do."""
        suffix = Path(key).suffix.lower()
        able = [k["kind"] for k in kinds if suffix and suffix in k.get("suffixes", [])]
        if not able:
            return None
        return default if default in able else str(able[0])

    return _Kinds(default, {k["kind"]: list(k.get("params", [])) for k in kinds}, pick)


def _files_prefix(client: ConveyorClient) -> str:
    """Where the caller's files live: '<token name>/' for a submitter or developer, ''
    for everyone else (and from a server without /api/me)."""
    try:
        me = client.request("GET", "/api/me")
    except ClientError as exc:
        if exc.status == 404:
            return ""
        raise
    return str(me.get("files_prefix") or "")


def submit(
    target: str = typer.Argument(..., help="A local file, or BUCKET/KEY already stored."),
    types: list[str] = typer.Option(
        None, "--types", "-t", help="Transcode types (comma-separated or repeated)."
    ),
    kind: str = typer.Option(
        None,
        help="Task kind (default: the kind that takes the file's suffix, such as docparse "
        "for a PDF or image, else the server's default kind, transcode).",
    ),
    params: str = typer.Option(None, help="Kind parameters as JSON."),
    pages: str = typer.Option(None, help="docparse: pages to parse, e.g. 1-5,8,10-."),
    ocr: str = typer.Option(None, help="docparse: OCR mode auto, force or off."),
    langs: str = typer.Option(None, help="docparse: OCR languages, e.g. eng,chi_sim."),
    engine: str = typer.Option(None, help="docparse: engine auto, lite or mineru."),
    formats: str = typer.Option(None, help="docparse: outputs, e.g. markdown,content_list."),
    priority: int = typer.Option(0, help="Higher runs first."),
    bucket: str = typer.Option("input", help="Bucket a local file is uploaded to."),
    key: str = typer.Option(
        None,
        help="Key for an uploaded file (default: its name); a submitter's files go under "
        "its own folder ('<token name>/'), added when missing.",
    ),
    external_id: str = typer.Option(None, "--external-id", help="Your own id for the task."),
    metadata: str = typer.Option(None, help="A small JSON object kept with the task."),
    webhook: str = typer.Option(
        None, help="A URL this task's events are POSTed to, signed (docs/events.md)."
    ),
    wait: bool = typer.Option(False, "--wait", "-w", help="Follow progress until done."),
    url: str = URL,
) -> None:
    """Submit a task; a local file is uploaded to the input bucket first."""
    client = _client(url)
    try:
        path = Path(target)
        upload_key = None
        if path.is_file():
            in_bucket, in_key = bucket, key or path.name
            prefix = _files_prefix(client)
            if prefix and not in_key.startswith(prefix):
                in_key = prefix + in_key  # the server refuses a submitter any other key
            console.print(f"Uploading {path} → {in_bucket}/{in_key}")
            upload_key = client.upload(path, in_bucket, in_key)["upload_key"]
        elif "/" in target:
            in_bucket, in_key = target.split("/", 1)
        else:
            err.print(f"[red]error[/red]: {target!r} is neither a local file nor BUCKET/KEY")
            raise typer.Exit(2)
        known = _kinds(client)
        chosen = kind or known.pick(in_key)  # None: the server's default kind
        body: dict[str, Any] = {
            "input_bucket": in_bucket,
            "input_key": in_key,
            "priority": priority,
        }
        if chosen:
            body["kind"] = chosen
        if upload_key:  # the upload trigger will not queue this upload a second time
            body["idempotency_key"] = upload_key
        if types:
            body["transcode_types"] = _split_types(types)
        if params:
            body["params"] = json.loads(params)
        if external_id:
            body["external_id"] = external_id
        if metadata:
            body["metadata"] = json.loads(metadata)
        if webhook:
            body["webhook"] = {"url": webhook}
        doc_opts = {
            "pages": pages,
            "ocr": ocr,
            "ocr_langs": _split_types([langs]) if langs else None,
            "engine": engine,
            "formats": _split_types([formats]) if formats else None,
        }
        given = {k: v for k, v in doc_opts.items() if v is not None}
        if given:
            # the kinds whose params these are; the task's kind must be one of them
            theirs = [k for k, names in known.params.items() if set(given) <= set(names)]
            if (chosen or known.default) not in theirs:
                err.print(
                    "[red]error[/red]: --pages/--ocr/--langs/--engine/--formats are for "
                    + (", ".join(theirs) or "no kind this server runs")
                )
                raise typer.Exit(2)
            body["params"] = {**body.get("params", {}), **given}
        res = client.add(body)
    except ClientError as exc:
        _fail(exc)
        return
    console.print(f"Task [bold]{res['task_id']}[/bold] {res['message']}")
    if res.get("webhook_secret"):  # shown this once: it signs the task's webhook
        console.print(f"webhook secret (shown once): {res['webhook_secret']}", highlight=False)
    if wait:
        raise typer.Exit(_wait(client, res["task_id"]))


def _wait(client: ConveyorClient, task_id: str) -> int:
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        job = bar.add_task("pending", total=100)
        while True:
            t = client.task(task_id)
            p = t["progress"]
            bar.update(
                job,
                completed=p.get("percent", 0),
                description=f"{t['status']} {p.get('phase', '')}".strip(),
            )
            if t["status"] in ("completed", "failed", "cancelled"):
                break
            time.sleep(0.5)
    _print_task(t)
    return 0 if t["status"] == "completed" else 1


def _print_task(t: dict[str, Any]) -> None:
    colour = {"completed": "green", "failed": "red", "cancelled": "yellow"}.get(t["status"], "cyan")
    console.print(
        f"[bold]{t['id']}[/bold] {t['kind']} [{colour}]{t['status']}[/{colour}] "
        f"attempts {t['attempts']}/{t['max_attempts']}"
    )
    if t.get("input"):
        console.print(f"  input   {t['input']['bucket']}/{t['input']['key']}")
    if t.get("waiting_reason"):
        console.print(f"  waiting {t['waiting_reason']}", highlight=False)
    if t.get("error"):
        console.print(f"  error   [red]{t['error']}[/red]")
    for o in t.get("outputs", []):
        console.print(f"  output  {o['name']:<20} {o['bucket']}/{o['key']} ({o['size']} bytes)")


def tasks(
    status: str = typer.Option(None, help="pending|processing|completed|failed|cancelled"),
    date: str = typer.Option(None, help="YYYY-MM-DD"),
    limit: int = typer.Option(20),
    cursor: str = typer.Option(None),
    external_id: str = typer.Option(None, "--external-id", help="Your own id, given on submit."),
    as_json: bool = typer.Option(False, "--json"),
    url: str = URL,
) -> None:
    """List tasks, newest first."""
    q: dict[str, Any] = {"limit": limit}
    for k, v in (
        ("status", status),
        ("date", date),
        ("cursor", cursor),
        ("external_id", external_id),
    ):
        if v:
            q[k] = v
    try:
        res = _client(url).request("GET", "/api/tasks", params=q)
    except ClientError as exc:
        _fail(exc)
        return
    if as_json:
        console.print_json(json.dumps(res))
        return
    table = Table("id", "kind", "status", "progress", "input", "created")
    for t in res["tasks"]:
        inp = f"{t['input']['bucket']}/{t['input']['key']}" if t.get("input") else "-"
        table.add_row(
            t["id"],
            t["kind"],
            t["status"],
            f"{t['progress']['percent']:.0f}%",
            inp,
            t["created_at"][:19],
        )
    console.print(table)
    if res.get("next_cursor"):
        console.print(f"more: --cursor {res['next_cursor']}")


def show(task_id: str, as_json: bool = typer.Option(False, "--json"), url: str = URL) -> None:
    """Show one task."""
    try:
        client = _client(url)
        t = client.task(task_id)
        # a parent (a long video split into chunks): its children and overall progress
        kids = (
            client.request("GET", f"/api/tasks/{task_id}/children") if t.get("children") else None
        )
    except ClientError as exc:
        _fail(exc)
        return
    if as_json:
        console.print_json(json.dumps(t if kids is None else {**t, "children_of": kids}))
        return
    _print_task(t)
    if kids is not None:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(kids["by_status"].items()))
        console.print(f"  children {kids['total']} ({counts}), {kids['percent']:g} % done")
        for c in kids["children"]:
            detail = c.get("error") or c["progress"].get("phase", "")
            console.print(
                f"    {c['id']} {c['status']:<10} {c['progress']['percent']:>5.1f}% "
                f"attempts {c['attempts']}/{c['max_attempts']} {detail}",
                highlight=False,
            )


def cancel(task_id: str, url: str = URL) -> None:
    """Cancel a task (a running one is stopped)."""
    try:
        t = _client(url).request("POST", f"/api/tasks/{task_id}/cancel")
    except ClientError as exc:
        _fail(exc)
        return
    state = "cancel requested" if t["status"] == "processing" else t["status"]
    console.print(f"{task_id}: {state}")


def retry(task_id: str, url: str = URL) -> None:
    """Retry a failed or cancelled task."""
    try:
        t = _client(url).request("POST", f"/api/tasks/{task_id}/retry")
    except ClientError as exc:
        _fail(exc)
        return
    console.print(f"{task_id}: {t['status']}")


def logs(
    task_id: str,
    attempt: int = typer.Option(None),
    follow: bool = typer.Option(False, "--follow", "-f"),
    url: str = URL,
) -> None:
    """Print a task's log (``-f`` follows it while it runs)."""
    client = _client(url)
    after = 0
    try:
        while True:
            q: dict[str, Any] = {"after": after}
            if attempt:
                q["attempt"] = attempt
            res = client.request("GET", f"/api/tasks/{task_id}/logs", params=q)
            for ln in res["lines"]:
                console.print(
                    f"{ln['ts'][11:23]} #{ln['attempt']} {ln['line']}",
                    markup=False,
                    highlight=False,
                )
            after = res["last_seq"]
            if not follow:
                return
            if not res["lines"]:
                t = client.task(task_id)
                if t["status"] in ("completed", "failed", "cancelled"):
                    return
                time.sleep(1.0)
    except ClientError as exc:
        _fail(exc)


@queue_app.command("status")
def queue_status(url: str = URL) -> None:
    """Pending, in-flight and today's totals."""
    try:
        s = _client(url).request("GET", "/api/queue/status")
    except ClientError as exc:
        _fail(exc)
        return
    table = Table(
        "pending",
        "delayed",
        "waiting for children",
        "processing",
        "completed today",
        "failed today",
        "workers",
    )
    table.add_row(
        *(
            str(s.get(k, 0))
            for k in (
                "pending",
                "delayed",
                "waiting_for_children",
                "processing",
                "completed_today",
                "failed_today",
                "workers",
            )
        )
    )
    console.print(table)


@queue_app.command("clear")
def queue_clear(
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask."), url: str = URL
) -> None:
    """Cancel every pending task."""
    client = _client(url)
    try:
        s = client.request("GET", "/api/queue/status")
        n = s["pending"] + s["delayed"] + s.get("waiting_for_children", 0)
        if not yes and not typer.confirm(f"Cancel {n} pending task(s)?"):
            raise typer.Exit(1)
        res = client.request("POST", "/api/queue/clear")
    except ClientError as exc:
        _fail(exc)
        return
    console.print(res["message"])


def health(url: str = URL) -> None:
    """Ask a running server whether it is healthy."""
    try:
        h = _client(url).request("GET", "/api/health")
    except ClientError as exc:
        _fail(exc)
        return
    console.print_json(json.dumps(h))


def status(
    as_json: bool = typer.Option(False, "--json"),
    url: str = URL,
) -> None:
    """Health, readiness, queue and workers of a running server (exit 1 when unhealthy)."""
    import httpx

    try:  # a 503 still carries the document: read it rather than raise
        r = _client(url).http.get("/api/v1/monitoring/health")
        h: dict[str, Any] = r.json()
    except (httpx.HTTPError, ValueError) as exc:
        err.print(f"[red]error[/red] (unreachable): cannot reach Conveyor at {url}: {exc}")
        raise typer.Exit(1) from None
    if as_json:
        console.print_json(json.dumps(h))
    else:
        colour = "green" if h.get("status") == "healthy" else "red"
        console.print(
            f"Conveyor {h.get('version', '?')} at {url}: [{colour}]{h.get('status')}[/{colour}] "
            f"(up {h.get('uptime_s', 0):.0f} s)"
        )
        for name, result in (h.get("checks") or {}).items():
            mark = "[green]ok[/green]" if result == "ok" else f"[red]{result}[/red]"
            console.print(f"  {name:<8} {mark}")
        q = h.get("queue") or {}
        if "pending" in q:
            console.print(
                f"  queue    {q['pending']} pending, {q['delayed']} delayed, "
                f"{q.get('waiting_for_children', 0)} waiting for children, "
                f"{q['processing']} processing"
            )
            console.print(
                f"  today    {q['completed_today']} completed, {q['failed_today']} failed"
            )
            console.print(f"  workers  {q['workers']}")
    raise typer.Exit(0 if h.get("status") == "healthy" else 1)
