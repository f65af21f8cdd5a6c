"""``fedmodel node``: a site's SuperNode (start, stop) and what it has done (status).

Thin layer over :mod:`clients.daemon`. ``start`` stays in the foreground for systemd; exit 2
means a bad config, 3 that the SuperLink refused this node (not worth restarting).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from fedmodel.cli.errors import cli_errors

app = typer.Typer(
    help="Site: the SuperNode that trains under this node's policy.", no_args_is_help=True
)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="node.toml")]


@app.callback()
def node() -> None:
    """Site: the SuperNode that trains under this node's policy."""


@app.command()
@cli_errors
def start(config: ConfigOpt) -> None:
    """Run the SuperNode and its ClientApp launcher (installed code only) in the foreground."""
    from clients.daemon.service import run_node

    run_node(config, typer.echo)


@app.command()
@cli_errors
def stop(
    config: ConfigOpt,
    timeout: Annotated[float, typer.Option(help="s to wait for a clean exit before SIGKILL")] = 30,
) -> None:
    """Stop the node that `fedmodel node start` runs for this config (by its pid file).

    Its ledger, keys and state stay as they are. A task in progress is aborted as Flower aborts
    one; the ledger is appended one durable line per entry, so it keeps what was written."""
    from clients.daemon.checks import load_deployed_node
    from clients.daemon.service import PID_FILE
    from server.deploy.pidfile import stop_service

    node, dep, _ = load_deployed_node(config)
    stop_service(dep.state_dir / PID_FILE, f"node {node.name}", typer.echo, timeout)


@app.command()
@cli_errors
def pin(
    config: ConfigOpt,
    exchange_fingerprint: Annotated[
        str, typer.Option(help="sha256 of the ServerApp's X25519 key, from the coordinator")
    ],
    verify_key: Annotated[Path, typer.Option(help="the coordinator's server.ed25519.pub")],
) -> None:
    """Trust the coordinator's ServerApp for sealed updates (server.pin.json beside node.toml)."""
    import re

    from clients.daemon.checks import load_deployed_node
    from fedmodel.config import ConfigError
    from fedmodel.crypto.keys import load_verify_key
    from fedmodel.crypto.pin import write_pin

    _, _, source = load_deployed_node(config)
    if not re.fullmatch(r"[0-9a-f]{64}", exchange_fingerprint):
        raise ConfigError(f"--exchange-fingerprint: not 64 hex digits: {exchange_fingerprint!r}")
    load_verify_key(verify_key)
    path = write_pin(source.parent, exchange_fingerprint, verify_key.resolve())
    typer.echo(f"wrote {path}")


@app.command()
@cli_errors
def status(
    config: ConfigOpt,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Running and connected or not, the last round, epsilon spent and left."""
    from clients.daemon.status import node_status

    st = node_status(config)
    if as_json:
        typer.echo(json.dumps(st.as_dict(), indent=2, default=str))
        return
    typer.echo(f"node        {st.node} -> {st.superlink}")
    typer.echo(f"process     {f'running (pid {st.pid})' if st.running else 'not running'}")
    typer.echo(f"connection  {st.connection}")
    last = st.last_round
    typer.echo(
        "last round  "
        + (f"{last['kind']} run {last['run_id']} round {last['round']} at {last['time']}"
           if last else "none yet")
    )  # fmt: skip
    cap = f" of {st.epsilon_cap:g}, {st.epsilon_left:.3f} left" if st.epsilon_cap else ""
    typer.echo(f"epsilon     {st.epsilon_spent:.3f} spent{cap} (delta {st.delta})")
    typer.echo(f"ledger      {st.ledger_entries} entries")
    if st.ledger_problem:
        typer.echo(f"WARNING     ledger broken: {st.ledger_problem}")
    typer.echo(f"log         {st.log_file}")
    for line in st.log_tail:
        typer.echo(f"  {line}")


if __name__ == "__main__":
    app()
