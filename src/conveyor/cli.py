"""The ``conveyor`` command: run the service, or talk to a running one over HTTP."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from conveyor.cli_auth import announce_auth, guard_exposure, token_app, worker_token
from conveyor.cli_aws import aws_app
from conveyor.cli_db import db_app
from conveyor.client import ClientError, ConveyorClient

app = typer.Typer(
    help="Conveyor: a self-hosted job service for GPU work.",
    no_args_is_help=True,
    add_completion=False,
)
queue_app = typer.Typer(help="Queue status and clearing.", no_args_is_help=True)
app.add_typer(queue_app, name="queue")
app.add_typer(db_app, name="db")
app.add_typer(aws_app, name="aws")
app.add_typer(token_app, name="token")
worker_app = typer.Typer(help="Run a worker, or make its enrollment token.")
worker_app.command("token")(worker_token)
app.add_typer(worker_app, name="worker")
console = Console()
err = Console(stderr=True)

URL = typer.Option(
    "http://127.0.0.1:9999", "--url", envvar="CONVEYOR_URL", help="Conveyor API to talk to."
)


def _client(url: str) -> ConveyorClient:
    return ConveyorClient(url)


def _fail(exc: ClientError) -> None:
    err.print(f"[red]error[/red] ({exc.code}): {exc.message}")
    raise typer.Exit(2 if exc.status and exc.status < 500 else 1)


# -- running the service -------------------------------------------------------------
def _settings(**overrides: Any) -> Any:
    from conveyor.config import load_settings
    from conveyor.logs import setup_logging

    settings = load_settings(**overrides)
    setup_logging(settings.log_level, settings.log_format)
    return settings


def _serve(
    settings: Any,
    *,
    with_worker: bool,
    with_trigger: bool,
    concurrency: int | None,
    insecure: bool = False,
    tls: tuple[Path, Path] | None = None,
    proxy_headers: bool = False,
    forwarded_allow_ips: str | None = None,
) -> None:
    import logging

    import uvicorn

    from conveyor.api.app import create_app
    from conveyor.runtime import Runtime

    guard_exposure(settings, insecure)
    runtime = Runtime.build(
        settings, with_worker=with_worker, with_trigger=with_trigger, concurrency=concurrency
    )
    log = logging.getLogger("conveyor")
    announce_auth(settings, runtime.service.auth, log)
    log.info(
        "Conveyor API on %s://%s:%d (docs at /docs); data in %s; backend %s",
        "https" if tls else "http",
        settings.api_host,
        settings.api_port,
        settings.data_dir,
        settings.backend_url,
    )
    uvicorn.run(
        create_app(runtime),
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        timeout_graceful_shutdown=int(settings.shutdown_grace) + 5,
        ssl_certfile=str(tls[0]) if tls else None,
        ssl_keyfile=str(tls[1]) if tls else None,
        # client address and scheme from X-Forwarded-* only when asked, and
        # only from the proxies named (uvicorn's default: 127.0.0.1)
        proxy_headers=proxy_headers,
        forwarded_allow_ips=forwarded_allow_ips,
    )


@app.command()
def up(
    data_dir: Path = typer.Option(None, help="Where tasks and buckets live (./data)."),
    host: str = typer.Option(None, help="Address to bind (127.0.0.1)."),
    port: int = typer.Option(None, help="Port (9999)."),
    concurrency: int = typer.Option(None, help="Tasks run at once (MAX_CONCURRENT_TASKS)."),
    auth: bool = typer.Option(None, "--auth/--no-auth", help="Require tokens (CONVEYOR_AUTH)."),
    insecure: bool = typer.Option(False, help="Allow a non-loopback address without auth."),
) -> None:
    """Run API, worker and upload trigger in one process on the embedded defaults."""
    settings = _settings(
        data_dir=data_dir,
        api_host=host,
        api_port=port,
        max_concurrent_tasks=concurrency,
        auth=auth,
    )
    _serve(
        settings, with_worker=True, with_trigger=True, concurrency=concurrency, insecure=insecure
    )


@app.command()
def serve(
    data_dir: Path = typer.Option(None),
    host: str = typer.Option(None),
    port: int = typer.Option(None),
    backend: str = typer.Option(None, help="Backend URL (sqlite:///…)."),
    storage: str = typer.Option(None, help="Storage URL (file:///…)."),
    trigger: bool = typer.Option(True, help="Run the upload trigger too."),
    auth: bool = typer.Option(None, "--auth/--no-auth", help="Require tokens (CONVEYOR_AUTH)."),
    insecure: bool = typer.Option(False, help="Allow a non-loopback address without auth."),
    tls_cert: Path = typer.Option(None, "--tls-cert", help="Serve HTTPS with this PEM cert."),
    tls_key: Path = typer.Option(None, "--tls-key", help="... and this PEM private key."),
    proxy_headers: bool = typer.Option(
        False, "--proxy-headers", help="Trust X-Forwarded-For/-Proto from a TLS proxy."
    ),
    forwarded_allow_ips: str = typer.Option(
        None, help="Proxies trusted with --proxy-headers (default 127.0.0.1)."
    ),
) -> None:
    """Run the API (and the upload trigger and reaper) without a worker."""
    if (tls_cert is None) != (tls_key is None):
        err.print("[red]error[/red]: --tls-cert and --tls-key go together")
        raise typer.Exit(2)
    settings = _settings(
        data_dir=data_dir,
        api_host=host,
        api_port=port,
        backend_url=backend,
        storage_url=storage,
        trigger_enabled=trigger,
        auth=auth,
    )
    _serve(
        settings,
        with_worker=False,
        with_trigger=trigger,
        concurrency=None,
        insecure=insecure,
        tls=(tls_cert, tls_key) if tls_cert and tls_key else None,
        proxy_headers=proxy_headers,
        forwarded_allow_ips=forwarded_allow_ips,
    )


@worker_app.callback(invoke_without_command=True)
def worker(
    ctx: typer.Context,
    concurrency: int = typer.Option(None, help="Tasks run at once."),
    data_dir: Path = typer.Option(None),
    backend: str = typer.Option(None, help="Backend URL."),
    storage: str = typer.Option(None, help="Storage URL."),
    worker_id: str = typer.Option(None, help="Name this worker (default host-pid-rand)."),
    join: str = typer.Option(
        None, "--join", help="Join the API at this https:// URL as a remote worker."
    ),
    enroll: str = typer.Option(
        None,
        "--enroll",
        envvar="CONVEYOR_ENROLL_TOKEN",
        help="One-time enrollment token to exchange for a credential.",
    ),
    name: str = typer.Option(None, "--name", help="Worker name asked for when enrolling."),
    credential_file: Path = typer.Option(
        None, "--credential-file", help="Where the credential is kept (mode 0600)."
    ),
    ca_cert: Path = typer.Option(
        None, "--ca-cert", envvar="CONVEYOR_CA_CERT", help="CA bundle that signed the API's cert."
    ),
) -> None:
    """Run a worker: claim tasks and run them until SIGTERM.

    With ``--join https://API`` (or ``--backend https://API``) it is a remote
    worker: it needs only the API's URL and its credential.
    """
    if ctx.invoked_subcommand is not None:
        return
    from conveyor.runtime import build_service
    from conveyor.worker.loop import Worker

    if enroll and not join:
        err.print("[red]error[/red]: --enroll needs --join https://API")
        raise typer.Exit(2)
    if join or (backend or "").startswith(("https://", "http://")):
        raise typer.Exit(
            _remote_worker(
                api=join or backend,
                joined=bool(join),
                enroll_token=enroll,
                name=name or worker_id,
                credential_file=credential_file,
                ca_cert=ca_cert,
                storage=storage,
                data_dir=data_dir,
                concurrency=concurrency,
                worker_id=worker_id,
            )
        )
    settings = _settings(
        data_dir=data_dir,
        backend_url=backend,
        storage_url=storage,
        max_concurrent_tasks=concurrency,
    )
    service = build_service(settings)
    Worker(
        settings,
        service.backend,
        service.storage,
        service.registry,
        worker_id=worker_id,
        concurrency=concurrency,
    ).run_forever()
    service.backend.close()


def _remote_worker(
    *,
    api: str,
    joined: bool,
    enroll_token: str | None,
    name: str | None,
    credential_file: Path | None,
    ca_cert: Path | None,
    storage: str | None,
    data_dir: Path | None,
    concurrency: int | None,
    worker_id: str | None,
) -> int:
    """A worker that reaches tasks and files only through the API; its exit code."""
    import logging
    import os

    from conveyor.api_connection import ApiConnection
    from conveyor.backends.remote import RemoteBackend
    from conveyor.errors import ConveyorError
    from conveyor.processors import ProcessorRegistry
    from conveyor.storage import open_storage
    from conveyor.storage.remote import RemoteBlobStore
    from conveyor.worker.credential import (
        DEFAULT_CREDENTIAL_FILE,
        CredentialKeeper,
        enroll,
        read_credential_file,
        write_credential_file,
    )
    from conveyor.worker.loop import Worker

    settings = _settings(
        data_dir=data_dir, backend_url=api, storage_url=storage, max_concurrent_tasks=concurrency
    )
    log = logging.getLogger("conveyor.worker")
    # httpx logs every request at INFO: a line per heartbeat, and presigned URLs
    # carry signatures in their query strings
    logging.getLogger("httpx").setLevel(logging.WARNING)
    ca = str(ca_cert) if ca_cert else None
    keeper: CredentialKeeper | None = None
    try:
        if joined:
            path = (credential_file or DEFAULT_CREDENTIAL_FILE).expanduser()
            if enroll_token:
                with_token = ApiConnection(api, ca_cert=ca, retries=0)
                try:
                    cred = enroll(with_token, enroll_token, name)
                finally:
                    with_token.close()
                write_credential_file(path, cred)
                log.info("Enrolled as worker %s; credential stored in %s", cred.worker_id, path)
            else:
                cred = read_credential_file(path)
                if cred.api.rstrip("/") != api.rstrip("/"):
                    raise ConveyorError(
                        f"{path} holds a credential for {cred.api}, not {api}: "
                        "enroll with --enroll TOKEN or pass --credential-file"
                    )
            keeper = CredentialKeeper(path, cred)
            conn = ApiConnection(api, credential=keeper.current, ca_cert=ca)
            keeper.start(conn)
        else:
            token = os.environ.get("CONVEYOR_WORKER_CREDENTIAL") or None
            conn = ApiConnection(api, credential=token, ca_cert=ca)
            if token and not worker_id:  # a credential speaks for one worker id: use it
                worker_id = conn.send("GET", "/api/worker/v1/whoami", idempotent=True).json()[
                    "worker_id"
                ]
        # an empty claim waits on the API for work: an idle worker starts a new
        # task half a round trip after its submit
        backend = RemoteBackend(conn, claim_wait_s=settings.poll_interval)
        files = open_storage(storage) if storage else RemoteBlobStore(conn)
        w = Worker(
            settings,
            backend,
            files,
            ProcessorRegistry.load(settings),
            worker_id=keeper.worker_id if keeper else worker_id,
            concurrency=concurrency,
        )
        w.run_forever()
    except ConveyorError as exc:
        err.print(f"[red]error[/red] ({exc.code}): {exc.message}")
        return 2
    finally:
        if keeper is not None:
            keeper.stop()
    backend.close()
    if w.fatal is not None:
        return 3  # the API refused the credential: an operator must enroll it again
    return 0


# -- talking to a server ----------------------------------------------------------------
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


@app.command()
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


@app.command()
def tasks(
    status: str = typer.Option(None, help="pending|processing|completed|failed|cancelled"),
    date: str = typer.Option(None, help="YYYY-MM-DD"),
    limit: int = typer.Option(20),
    cursor: str = typer.Option(None),
    as_json: bool = typer.Option(False, "--json"),
    url: str = URL,
) -> None:
    """List tasks, newest first."""
    q: dict[str, Any] = {"limit": limit}
    for k, v in (("status", status), ("date", date), ("cursor", cursor)):
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


@app.command()
def show(task_id: str, as_json: bool = typer.Option(False, "--json"), url: str = URL) -> None:
    """Show one task."""
    try:
        t = _client(url).task(task_id)
    except ClientError as exc:
        _fail(exc)
        return
    if as_json:
        console.print_json(json.dumps(t))
    else:
        _print_task(t)


@app.command()
def cancel(task_id: str, url: str = URL) -> None:
    """Cancel a task (a running one is stopped)."""
    try:
        t = _client(url).request("POST", f"/api/tasks/{task_id}/cancel")
    except ClientError as exc:
        _fail(exc)
        return
    state = "cancel requested" if t["status"] == "processing" else t["status"]
    console.print(f"{task_id}: {state}")


@app.command()
def retry(task_id: str, url: str = URL) -> None:
    """Retry a failed or cancelled task."""
    try:
        t = _client(url).request("POST", f"/api/tasks/{task_id}/retry")
    except ClientError as exc:
        _fail(exc)
        return
    console.print(f"{task_id}: {t['status']}")


@app.command()
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
    table = Table("pending", "delayed", "processing", "completed today", "failed today", "workers")
    table.add_row(
        *(
            str(s[k])
            for k in (
                "pending",
                "delayed",
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
        n = s["pending"] + s["delayed"]
        if not yes and not typer.confirm(f"Cancel {n} pending task(s)?"):
            raise typer.Exit(1)
        res = client.request("POST", "/api/queue/clear")
    except ClientError as exc:
        _fail(exc)
        return
    console.print(res["message"])


@app.command()
def health(url: str = URL) -> None:
    """Ask a running server whether it is healthy."""
    try:
        h = _client(url).request("GET", "/api/health")
    except ClientError as exc:
        _fail(exc)
        return
    console.print_json(json.dumps(h))


@app.command()
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
                f"{q['processing']} processing"
            )
            console.print(
                f"  today    {q['completed_today']} completed, {q['failed_today']} failed"
            )
            console.print(f"  workers  {q['workers']}")
    raise typer.Exit(0 if h.get("status") == "healthy" else 1)


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
