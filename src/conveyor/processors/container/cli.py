"""The container kind's command: ``conveyor run [--gpus N|0,2 -e K=V …] IMAGE -- CMD ARGS``.

Registered by the ``conveyor.cli`` entry point (``register``), so the core CLI names
no kind; like every client command it talks to a running server over HTTP.
"""

from __future__ import annotations

from typing import Any

import typer

from conveyor.remote.client import ClientError, ConveyorClient

from . import ContainerProcessor


def register(app: typer.Typer) -> None:
    """Add ``conveyor run`` to the CLI (``conveyor.cli``, which calls this while it is
    being imported: its helpers are imported here, not at the top)."""
    from conveyor.cli import common

    app.command(context_settings={"allow_interspersed_args": False})(_run_command(common))


def _run_command(cli: Any) -> Any:
    def run(
        args: list[str] = typer.Argument(
            ..., help="IMAGE, then the command after -- (with --local: only the command)."
        ),
        gpus: str = typer.Option(None, "--gpus", help="A GPU count, or device ids such as 0,2."),
        env: list[str] = typer.Option(None, "--env", "-e", help="NAME=value (repeatable)."),
        secret: list[str] = typer.Option(
            None, "--secret", help="A secret's name, resolved on the worker (repeatable)."
        ),
        cpus: float = typer.Option(None, help="CPU limit (Docker)."),
        memory: str = typer.Option(None, help="Memory limit, e.g. 4g."),
        timeout: float = typer.Option(None, "--timeout", help="Seconds before the job is killed."),
        max_attempts: int = typer.Option(None, "--max-attempts", help="Attempts before failing."),
        output_dir: str = typer.Option(None, "--outputs", help="Folder in the container to keep."),
        local: bool = typer.Option(False, "--local", help="Run as a local process, no image."),
        priority: int = typer.Option(0, help="Higher runs first."),
        follow: bool = typer.Option(False, "--follow", "-f", help="Stream the log until it ends."),
        url: str = cli.URL,
    ) -> None:
        """Run a container job: ``conveyor run IMAGE -- CMD ARGS...``.

        It runs code you supply, so it needs a token whose role may run code (developer or
        admin: the tasks:run_code permission); the code sees only what its sandbox shows it.
        Secrets (--secret) must be granted to the token by name."""
        image, command = (None, args) if local else (args[0], args[1:])
        params: dict[str, Any] = {"command": command}
        if image:
            params["image"] = image
        if local:
            params["runner"] = "local"
        if gpus:
            params["gpus"] = int(gpus) if gpus.isdigit() else [g for g in gpus.split(",") if g]
        if env:
            bad = [e for e in env if "=" not in e]
            if bad:
                cli.err.print(f"[red]error[/red]: --env takes NAME=value, not {bad[0]!r}")
                raise typer.Exit(2)
            params["env"] = dict(e.split("=", 1) for e in env)
        for key, value in (
            ("secrets", secret or None),
            ("cpus", cpus),
            ("memory", memory),
            ("max_attempts", max_attempts),
            ("outputs", output_dir),
        ):
            if value is not None:
                params[key] = value
        body: dict[str, Any] = {
            "kind": ContainerProcessor.kind,
            "params": params,
            "priority": priority,
        }
        if timeout:
            body["timeout_s"] = timeout
        client = cli.client(url)
        try:
            res = client.add(body)
        except ClientError as exc:
            cli.fail(exc)
            return
        task_id = res["task_id"]
        cli.console.print(f"Task [bold]{task_id}[/bold] {res['message']}", highlight=False)
        if follow:
            raise typer.Exit(_follow(client, task_id))

    def _follow(client: ConveyorClient, task_id: str) -> int:
        """Print the log as server-sent events arrive; the exit status mirrors the task's."""
        end: dict[str, Any] = {}
        try:
            for event, data in client.follow_logs(task_id):
                if event == "log":
                    stream = (
                        "" if data["stream"] in ("stdout", "worker") else f"[{data['stream']}] "
                    )
                    cli.console.print(
                        f"{data['ts'][11:23]} #{data['attempt']} {stream}{data['line']}",
                        markup=False,
                        highlight=False,
                    )
                elif event == "end":
                    end = data
        except ClientError as exc:
            cli.fail(exc)
        status = end.get("status") or client.task(task_id)["status"]
        cli.console.print(
            f"{task_id}: {status}" + (f" ({end['error']})" if end.get("error") else "")
        )
        return 0 if status == "completed" else 1

    return run
