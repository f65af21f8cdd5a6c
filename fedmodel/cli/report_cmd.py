"""``fedmodel report``: the compliance report of one run folder.

Registered by the CLI app as
``fedmodel report RUN_DIR [--ledgers DIR ...] [--keys REGISTRY] [--server-key PUB] [--out DIR]``.
The run folder alone is enough: it holds the server's copy of each site's ledger (grown from the
signed entries every reply carries) and the keys the run registered.
A broken ledger, a missing run folder or metrics file is a ``FedmodelError``: one line on
stderr, exit code 2, and no report files written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedmodel.cli.errors import cli_errors


@cli_errors
def report(
    run_dir: Annotated[
        Path, typer.Argument(help="Run folder (run.json, metrics.jsonl, ledgers/, audit.jsonl).")
    ],
    ledgers: Annotated[
        list[Path] | None,
        typer.Option(
            "--ledgers",
            help="A site's own ledger folder or ledger.jsonl, repeatable: cross-checked against "
            "the run folder's copy (RUN_DIR/ledgers), which must be its prefix.",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Output folder; default RUN_DIR/report."),
    ] = None,
    keys: Annotated[
        Path | None,
        typer.Option(
            "--keys",
            help="The coordinator's registry of node keys (<node>.ed25519.pub); default: the "
            "run's own RUN_DIR/registered-keys.",
        ),
    ] = None,
    server_key: Annotated[
        Path | None,
        typer.Option(
            "--server-key",
            help="The server's Ed25519 verify key as the coordinator published it: the audit "
            "log must verify with it (default: the run folder's copy, "
            "server-keys/server.ed25519.pub).",
        ),
    ] = None,
) -> None:
    """Verify every ledger, recompute and cross-check each site's epsilon, write HTML/PDF/JSON."""
    from fedmodel.report import build_report  # heavy (matplotlib, reportlab): load on use

    out_dir = out if out is not None else run_dir / "report"
    files = build_report(
        run_dir, out_dir, ledgers or None, registered_keys=keys, server_key=server_key
    )
    rep = files.report
    exceeded = [c.node for c in rep.clients if c.budget_exceeded]
    typer.echo(
        f"report for run {rep.run.run_id}: {len(rep.clients)} sites, budget exceeded: "
        + (", ".join(exceeded) if exceeded else "none")
        + f"; warnings: {len(rep.warnings)}"
    )
    typer.echo(f"wrote {files.html}, {files.pdf}, {files.json}")
