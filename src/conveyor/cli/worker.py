"""``conveyor worker``: run a worker on an engine, or join an API as a remote worker
(``--join https://API``); ``conveyor worker token`` makes an enrollment token."""

from __future__ import annotations

from pathlib import Path

import typer

from conveyor.cli.auth import worker_token
from conveyor.cli.common import err, load_settings

worker_app = typer.Typer(help="Run a worker, or make its enrollment token.")
worker_app.command("token")(worker_token)


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
    from conveyor.server.runtime import build_service, local_worker

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
    settings = load_settings(
        data_dir=data_dir,
        backend_url=backend,
        storage_url=storage,
        max_concurrent_tasks=concurrency,
    )
    service = build_service(settings)
    local_worker(service, worker_id=worker_id, concurrency=concurrency).run_forever()
    service.close()


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

    from conveyor.errors import ConveyorError
    from conveyor.processors import ProcessorRegistry
    from conveyor.remote.connection import ApiConnection
    from conveyor.remote.credential import (
        DEFAULT_CREDENTIAL_FILE,
        CredentialKeeper,
        enroll,
        read_credential_file,
        write_credential_file,
    )
    from conveyor.remote.queue import RemoteQueue
    from conveyor.remote.storage import RemoteBlobStore
    from conveyor.storage import open_storage
    from conveyor.worker.loop import Worker

    settings = load_settings(
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
        backend = RemoteQueue(conn, claim_wait_s=settings.poll_interval)
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
