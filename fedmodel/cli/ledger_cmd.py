"""``fedmodel ledger``: verify and show a node's privacy ledger.

Exit codes: 0 the ledger is sound, 1 it is broken (the first broken entry is printed), 2 the
input is bad (missing file, wrong key file, unreadable run folder), as one line.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from fedmodel.cli.errors import reported_errors
from fedmodel.privacy.ledger import (
    LedgerEntry,
    LedgerError,
    VerifyReport,
    server_heads,
    verify_ledger,
)

app = typer.Typer(help="Verify and show a node's privacy ledger.", no_args_is_help=True)

KEY_HELP = (
    "Ed25519 public key (PEM) registered for this node with the coordinator; default: the "
    "ledger's own signer.pub, which only proves the ledger is self-consistent."
)
HEADS_HELP = "Run folder whose metrics.jsonl holds the ledger heads the server recorded."
NODE_HELP = "Node name in metrics.jsonl (default: the node recorded in the ledger)."
PathArg = Annotated[Path, typer.Argument(help="Ledger directory or its ledger.jsonl.")]
KeyOpt = Annotated[Path | None, typer.Option("--key", help=KEY_HELP)]


@app.callback()
def ledger() -> None:
    """Verify and show a node's privacy ledger."""


@app.command()
def verify(
    path: PathArg,
    key: KeyOpt = None,
    heads: Annotated[Path | None, typer.Option("--heads", help=HEADS_HELP)] = None,
    node: Annotated[str | None, typer.Option("--node", help=NODE_HELP)] = None,
) -> None:
    """Check the hash chain, the signatures and, with --heads, the server's recorded heads."""
    with reported_errors():
        report = _verify(path, key, heads, node)
    typer.echo(report.summary())
    if key is None:
        typer.echo(
            "note: checked with the ledger's own signer.pub; pass --key for the registered key"
        )
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def show(path: PathArg, key: KeyOpt = None) -> None:
    """Table of the verified entries with cumulative epsilon (PRV and RDP)."""
    with reported_errors():
        report = verify_ledger(path, key)
    typer.echo(_row_header())
    for entry in report.entries:
        typer.echo(_row(entry))
    typer.echo(report.summary())
    if not report.ok:
        raise typer.Exit(1)


def _verify(path: Path, key: Path | None, run_dir: Path | None, node: str | None) -> VerifyReport:
    report = verify_ledger(path, key)
    if run_dir is None:
        return report
    node = node or report.node
    if node is None:
        raise LedgerError(f"{path}: the ledger names no node; pass --node to match --heads")
    recorded = server_heads(run_dir, node)
    if not recorded:
        raise LedgerError(f"{run_dir}/metrics.jsonl: no ledger heads recorded for node {node!r}")
    return verify_ledger(path, key, recorded)


_COLUMNS = (
    ("seq", 4), ("kind", 8), ("run", 12), ("round", 5), ("noise", 6), ("q", 7), ("steps", 6),
    ("clip", 5), ("delta", 8), ("eps_prv", 9), ("eps_rdp", 9), ("time", 24),
)  # fmt: skip


def _row_header() -> str:
    return " ".join(f"{name:>{width}}" for name, width in _COLUMNS)


def _row(e: LedgerEntry) -> str:
    if e.spends:
        cells = [
            e.seq, e.kind, e.run_id, e.round, _num(e.noise_multiplier), _num(e.sample_rate),
            e.steps, _num(e.max_grad_norm), _num(e.delta), _eps(e.epsilon), _eps(e.epsilon_rdp),
            e.time,
        ]  # fmt: skip
        return " ".join(
            f"{cell!s:>{width}}" for cell, (_, width) in zip(cells, _COLUMNS, strict=True)
        )
    head = " ".join(
        f"{cell!s:>{width}}"
        for cell, (_, width) in zip((e.seq, e.kind, e.run_id, e.round), _COLUMNS, strict=False)
    )
    return f"{head}  refused: {e.reason} (projected epsilon {_eps(e.projected_epsilon)})"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _eps(value: float | None) -> str:
    """``None`` in the ledger means the accountant found no bound, so show it as infinity."""
    return "inf" if value is None or math.isinf(value) else f"{value:.4f}"
