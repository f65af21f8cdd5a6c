"""``fedmodel model hash``: the digest a site lists to approve a custom model factory.

An operator never hashes by hand: this prints the SHA-256 a node compares before it imports a
``model.factory`` (:func:`fedmodel.models.custom.factory_digest`), the files it covers, and the
line to paste into ``node.toml``. Nothing is imported. Run it in the node's own environment, so
the files found are the ones the node would import.
"""

from __future__ import annotations

from typing import Annotated

import typer

from fedmodel.cli.errors import reported_errors
from fedmodel.models.custom import factory_digest, factory_source_files

app = typer.Typer(help="Custom model factories: the digest a site approves.", no_args_is_help=True)

SPEC_HELP = 'The factory as the scenario names it: "package.module:function".'


@app.callback()
def model() -> None:
    """Custom model factories: the digest a site approves."""


@app.command("hash")
def hash_factory(spec: Annotated[str, typer.Argument(help=SPEC_HELP)]) -> None:
    """Print the factory's source digest, the files it covers and the policy line."""
    with reported_errors():
        digest = factory_digest(spec)
        files = factory_source_files(spec)
    typer.echo(digest)
    for path in files:
        typer.echo(f"  {path}")
    typer.echo("[policy.allowed_model_factories]")
    typer.echo(f'"{spec}" = "{digest}"')
