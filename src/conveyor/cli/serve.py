"""``conveyor up`` and ``conveyor serve``: run the API (with a worker, the upload trigger
and the reaper, as asked) in this process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from conveyor.cli.auth import announce_auth, guard_exposure
from conveyor.cli.common import err, load_settings


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

    from conveyor.server.app import create_app
    from conveyor.server.runtime import Runtime

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


def up(
    data_dir: Path = typer.Option(None, help="Where tasks and buckets live (./data)."),
    host: str = typer.Option(None, help="Address to bind (127.0.0.1)."),
    port: int = typer.Option(None, help="Port (9999)."),
    concurrency: int = typer.Option(None, help="Tasks run at once (MAX_CONCURRENT_TASKS)."),
    auth: bool = typer.Option(None, "--auth/--no-auth", help="Require tokens (CONVEYOR_AUTH)."),
    insecure: bool = typer.Option(False, help="Allow a non-loopback address without auth."),
) -> None:
    """Run API, worker and upload trigger in one process on the embedded defaults."""
    settings = load_settings(
        data_dir=data_dir,
        api_host=host,
        api_port=port,
        max_concurrent_tasks=concurrency,
        auth=auth,
    )
    _serve(
        settings, with_worker=True, with_trigger=True, concurrency=concurrency, insecure=insecure
    )


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
    settings = load_settings(
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
