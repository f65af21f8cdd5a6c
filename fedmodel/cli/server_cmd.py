"""``fedmodel server``: the coordinator's SuperLink (start, stop) and federated runs on it (run).

Thin layer over :mod:`server.deploy`; every rule lives there. Bad configs are one line and
exit 2 (``cli_errors``); ``start`` stays in the foreground, as systemd expects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from fedmodel.cli.errors import cli_errors

app = typer.Typer(
    help="Coordinator: the SuperLink (TLS, node authentication) and runs on it.",
    no_args_is_help=True,
)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="server.toml")]


@app.callback()
def server() -> None:
    """Coordinator: the SuperLink (TLS, node authentication) and runs on it."""


@app.command()
@cli_errors
def start(config: ConfigOpt) -> None:
    """Run the SuperLink in the foreground and register the nodes listed in server.toml."""
    from server.deploy.config import load_server_config
    from server.deploy.superlink import run_superlink

    run_superlink(load_server_config(config), _say)


@app.command()
@cli_errors
def stop(
    config: ConfigOpt,
    timeout: Annotated[float, typer.Option(help="s to wait for a clean exit before SIGKILL")] = 30,
) -> None:
    """Stop the SuperLink that `fedmodel server start` runs for this config (by its pid file)."""
    from server.deploy.config import load_server_config
    from server.deploy.pidfile import stop_service

    stop_service(load_server_config(config).pid_file, "the SuperLink", typer.echo, timeout)


@app.command("register-node")
@cli_errors
def register_node(
    config: ConfigOpt,
    name: Annotated[str, typer.Option(help="the [[nodes]] entry whose auth key to register")],
) -> None:
    """Register one [[nodes]] entry's auth key on the running SuperLink (no restart needed)."""
    from server.deploy.config import load_server_config
    from server.deploy.superlink import register_node as register

    typer.echo(register(load_server_config(config), config.absolute(), name))


@app.command()
@cli_errors
def run(
    config: ConfigOpt,
    scenario: Annotated[str, typer.Option(help="built-in scenario name or TOML path")],
    rounds: Annotated[int | None, typer.Option(help="federated rounds")] = None,
    min_nodes: Annotated[
        int | None, typer.Option(help="fewest nodes a round needs (default: the scenario's)")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="run folder (default: run.out_dir/<scenario>-<time>)")
    ] = None,
) -> None:
    """Submit a run to the SuperLink (flwr run), follow its rounds, check it finished."""
    from server.deploy.config import load_server_config
    from server.deploy.submit import RunRequest, submit_run

    cfg = load_server_config(config)
    request = RunRequest(scenario=scenario, rounds=rounds, run_dir=out, min_nodes=min_nodes)
    run_dir = submit_run(cfg, request, _print_round, typer.echo)
    typer.echo(f"run folder: {run_dir}")


def _print_round(row: dict[str, Any]) -> None:
    from server.records import round_report

    for line in round_report(row):
        typer.echo(line)


def _say(text: str) -> None:
    typer.echo(text)


if __name__ == "__main__":
    app()
