"""``fedmodel keys``: create a node's key files (ledger signing key + SuperNode auth key)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedmodel.cli.errors import reported_errors
from fedmodel.crypto.keys import generate_node_identity

app = typer.Typer(help="Create node key files.", no_args_is_help=True)


@app.callback()
def keys() -> None:
    """Create node key files."""


@app.command()
def node(
    name: Annotated[str, typer.Argument(help="Node name, e.g. node-0 or hospital-a.")],
    directory: Annotated[
        Path, typer.Argument(help="Folder for the key files (created if needed).")
    ],
    force: Annotated[bool, typer.Option("--force", help="Replace existing key files.")] = False,
) -> None:
    """Write NAME.ed25519(.pub) for the privacy ledger and NAME.auth(.pub) for SuperNode auth.

    Register both public fingerprints with the coordinator: the ledger key lets a reviewer
    verify this node's ledger independently of the node's own disk.
    """
    with reported_errors():
        identity = generate_node_identity(name, directory, force=force)
    typer.echo(f"signing key   {identity.signing_key}  (public: {identity.signing_public})")
    typer.echo(f"  sha256 {identity.signing_fingerprint}")
    typer.echo(f"auth key      {identity.auth_key}  (public: {identity.auth_public})")
    typer.echo(f"  sha256 {identity.auth_fingerprint}")


@app.command()
def rotate(
    config: Annotated[Path, typer.Option("--config", help="the node's node.toml")],
) -> None:
    """Replace the node's ledger signing key without resetting its epsilon.

    A new key is written beside the old one (``.next``), the ledger records the hand-over in an
    entry signed by the old key that carries the cumulative history, the old key is kept as
    ``.retired-<time>`` and the new one takes its place. Send the new ``.pub`` to the
    coordinator: from now on it verifies this node's replies and ledger entries.
    """
    from fedmodel.node_config import load_node_config
    from fedmodel.privacy.rotation import rotate_signing_key

    with reported_errors():
        node = load_node_config(config)
        result = rotate_signing_key(node.signing_key, node.ledger_dir, node.high_water_mark)
    typer.echo(f"ledger {node.ledger_dir}: rotation entry {result.entry_seq}")
    typer.echo(f"new signing key {node.signing_key}  sha256 {result.new_fingerprint}")
    typer.echo(f"old key kept as {result.retired}; send {result.public} to the coordinator")
