"""``fedmodel audit``: verify a run's signed audit log (``RUN_DIR/audit.jsonl``).

Exit codes: 0 the log is sound, 1 it is broken (the first broken entry is named), 2 the input
is bad (no audit log, unreadable key file), as one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedmodel.cli.errors import reported_errors

app = typer.Typer(help="Verify a run's signed audit log.", no_args_is_help=True)

KEY_HELP = (
    "The server's Ed25519 verify key (PEM) as the coordinator published it; default: the run "
    "folder's server-keys/server.ed25519.pub, which only proves the log is self-consistent."
)


@app.callback()
def audit() -> None:
    """Verify a run's signed audit log."""


@app.command()
def verify(
    path: Annotated[Path, typer.Argument(help="Run folder or its audit.jsonl.")],
    key: Annotated[Path | None, typer.Option("--key", help=KEY_HELP)] = None,
) -> None:
    """Check the hash chain, the server's signatures and every entry's fields."""
    from server.audit import verify_audit  # the server package owns the log's format

    with reported_errors():
        report = verify_audit(path, key)
    typer.echo(report.summary())
    if key is None:
        typer.echo("note: checked with the run folder's own key; pass --key for the published one")
    if not report.ok:
        raise typer.Exit(1)
