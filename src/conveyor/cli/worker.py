"""``conveyor worker``: run a worker on an engine, or join an API as a remote worker
(``--join https://API``); ``conveyor worker token`` makes an enrollment token.

``--executor slurm --partition P [--account A --qos Q]``: a worker on an HPC cluster's
login node whose attempts run as Slurm jobs on the compute nodes (docs/slurm.md); it
joins the API as a remote worker, and its jobs reach the API with a credential scoped to
their one task and attempt."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from conveyor.cli.auth import worker_token
from conveyor.cli.common import err, load_settings

if TYPE_CHECKING:
    from conveyor.worker.slurm.jobspec import SlurmConfig

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
    executor: str = typer.Option(
        "local",
        "--executor",
        envvar="CONVEYOR_EXECUTOR",
        help="local: run tasks here; slurm: submit each attempt as a Slurm job.",
    ),
    partition: str = typer.Option(
        None, "--partition", envvar="CONVEYOR_SLURM_PARTITION", help="Slurm partition."
    ),
    account: str = typer.Option(
        None, "--account", envvar="CONVEYOR_SLURM_ACCOUNT", help="Slurm account (--account)."
    ),
    qos: str = typer.Option(None, "--qos", envvar="CONVEYOR_SLURM_QOS", help="Slurm QOS (--qos)."),
    slurm: str = typer.Option(
        "cli",
        "--slurm",
        envvar="CONVEYOR_SLURM_API",
        help="How to reach Slurm: cli (sbatch, squeue, …) or slurmrestd's "
        "http+unix:///path.socket or http(s)://host:port.",
    ),
    kinds: str = typer.Option(
        None, "--kinds", help="Slurm executor: the kinds it takes, comma-separated (all)."
    ),
    job_python: str = typer.Option(
        None,
        "--job-python",
        envvar="CONVEYOR_SLURM_PYTHON",
        help="Slurm executor: the Python with Conveyor on the compute nodes (this one).",
    ),
    output_dir: str = typer.Option(
        None,
        "--output-dir",
        envvar="CONVEYOR_SLURM_OUTPUT_DIR",
        help="Slurm executor: the folder of each job's output file, on the compute node (/tmp).",
    ),
    default_cpus: int = typer.Option(
        None, "--cpus", help="Slurm executor: CPUs of a task that names none in params.cpus (1)."
    ),
    default_mem: int = typer.Option(
        None,
        "--mem-mb",
        help="Slurm executor: memory (MiB) of a task that names none in params.memory.",
    ),
    job_env: list[str] = typer.Option(
        None, "--job-env", help="Slurm executor: NAME or NAME=VALUE for every job (repeat)."
    ),
    sbatch_arg: list[str] = typer.Option(
        None, "--sbatch-arg", help="Slurm executor: one more sbatch option (repeat)."
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
    slurm_cfg = None
    if executor not in ("local", "slurm"):
        err.print(f"[red]error[/red]: unknown executor {executor!r}: use local or slurm")
        raise typer.Exit(2)
    if executor == "slurm":
        if not (join or (backend or "").startswith(("https://", "http://"))):
            err.print(
                "[red]error[/red]: --executor slurm runs on a login node and joins the API: "
                "give --join https://API (or --backend https://API)"
            )
            raise typer.Exit(2)
        from conveyor.worker.slurm.jobspec import SlurmConfig

        slurm_cfg = SlurmConfig(
            partition=partition,
            account=account,
            qos=qos,
            api=slurm,
            job_env=list(job_env or []),
            extra_args=list(sbatch_arg or []),
        )
        if job_python:
            slurm_cfg.python = job_python
        if output_dir:
            slurm_cfg.output_dir = output_dir
        if default_cpus:
            slurm_cfg.default_cpus = default_cpus
        if default_mem:
            slurm_cfg.default_mem_mb = default_mem
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
                slurm_cfg=slurm_cfg,
                kinds=[k.strip() for k in kinds.split(",") if k.strip()] if kinds else None,
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
    slurm_cfg: SlurmConfig | None = None,
    kinds: list[str] | None = None,
) -> int:
    """A worker that reaches tasks and files only through the API; its exit code.  With
    ``slurm_cfg``: the Slurm executor (its attempts run as Slurm jobs)."""
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
        if slurm_cfg is not None:
            return _slurm_executor(
                settings,
                backend,
                conn,
                slurm_cfg,
                keeper.worker_id if keeper else worker_id,
                concurrency,
                kinds,
            )
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


def _slurm_executor(
    settings: Any,
    queue: Any,
    conn: Any,
    cfg: SlurmConfig,
    worker_id: str | None,
    concurrency: int | None,
    kinds: list[str] | None,
) -> int:
    """The Slurm executor on this login node until SIGTERM; its exit code."""
    import socket

    from conveyor.errors import ConveyorError
    from conveyor.processors import ProcessorRegistry
    from conveyor.worker.slurm.adapter import open_adapter
    from conveyor.worker.slurm.executor import SlurmExecutor

    registry = ProcessorRegistry.load(settings)
    wanted = kinds or registry.kinds()
    unknown = sorted(set(wanted) - set(registry.kinds()))
    if unknown:
        err.print(f"[red]error[/red]: unknown kind(s): {', '.join(unknown)}")
        return 2

    def secrets_of(task: Any) -> list[str]:
        try:
            return list(registry.get(task.kind).secrets_requested(task.params))
        except ConveyorError:
            return []

    host = socket.gethostname().split(".")[0]
    name = worker_id or f"slurm-{host}-{cfg.partition or 'default'}"
    try:
        adapter = open_adapter(cfg.api)
        ex = SlurmExecutor(
            settings,
            queue,
            slurm=adapter,
            cfg=cfg,
            conn=conn,
            worker_id=name,
            kinds=wanted,
            concurrency=concurrency,
            secrets_of=secrets_of,
        )
        ex.run_forever()
    except (ConveyorError, ValueError) as exc:
        err.print(f"[red]error[/red]: {getattr(exc, 'message', exc)}")
        return 2
    finally:
        queue.close()
    return 3 if ex.fatal is not None else 0
