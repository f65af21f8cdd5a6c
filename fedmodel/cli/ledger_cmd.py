"""``fedmodel ledger``: verify and show a node's privacy ledger; adopt it under a high-water mark.

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


@app.command()
def adopt(
    config: Annotated[Path, typer.Option("--config", help="the node's node.toml")],
) -> None:
    """Write the node's high-water mark for its ledger as it is now.

    For a ledger that has no mark (written before marks existed, or after a deliberate restore):
    the node refuses to train on a ledger without one, because a missing mark is what a deleted
    or cut-back ledger looks like. Adopting says, with the node's key, that this ledger is whole.
    """
    from fedmodel.crypto.keys import load_signing_key
    from fedmodel.node_config import load_node_config
    from fedmodel.privacy.ledger import Ledger

    with reported_errors():
        node = load_node_config(config)
        key = load_signing_key(node.signing_key)
        ledger = Ledger(node.ledger_dir, key, node=node.name)
        head = ledger.adopt_mark(node.high_water_mark)
    typer.echo(f"{node.high_water_mark}: marks {head.count} entries, head {head.hash[:16]}…")


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
    if e.kind in ("policy", "commit"):
        return _head_cells(e) + f"  {_describe(e)}"
    if e.spends:
        cells = [
            e.seq, e.kind, e.run_id, e.round, _num(e.noise_multiplier), _num(e.sample_rate),
            e.steps, _num(e.max_grad_norm), _num(e.delta), _eps(e.epsilon), _eps(e.epsilon_rdp),
            e.time,
        ]  # fmt: skip
        return " ".join(
            f"{cell!s:>{width}}" for cell, (_, width) in zip(cells, _COLUMNS, strict=True)
        )
    return _head_cells(e) + f"  refused: {e.reason} (projected epsilon {_eps(e.projected_epsilon)})"


def _head_cells(e: LedgerEntry) -> str:
    return " ".join(
        f"{cell!s:>{width}}"
        for cell, (_, width) in zip((e.seq, e.kind, e.run_id, e.round), _COLUMNS, strict=False)
    )


def _describe(e: LedgerEntry) -> str:
    if e.kind == "commit":
        sent = (e.update_sha256 or "nothing")[:16]
        return f"committed spend {str(e.spend)[:16]}…, sent {sent}"
    cap = "no cap" if e.cap_epsilon is None else f"cap ({e.cap_epsilon:g}, {e.cap_delta:g})"
    return f"{cap}, policy {str(e.policy_sha256)[:16]}…"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _eps(value: float | None) -> str:
    """``None`` in the ledger means the accountant found no bound, so show it as infinity."""
    return "inf" if value is None or math.isinf(value) else f"{value:.4f}"
