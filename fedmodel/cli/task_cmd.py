"""`fedmodel task`: declared tasks, the shape of the data every site maps its files to."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedmodel.cli.errors import cli_errors
from fedmodel.data.infer import infer_task
from fedmodel.errors import ConfigError
from fedmodel.io import atomic_write_text
from fedmodel.scenarios import _dump_toml

app = typer.Typer(help="Declared tasks.", no_args_is_help=True, add_completion=False)


@app.callback()
def _group() -> None:
    """Declared tasks: columns, types, ranges, classes, identifiers."""


@app.command("infer")
@cli_errors
def infer(
    sample: Annotated[Path, typer.Argument(help="A public or synthetic sample (CSV, Parquet).")],
    label: Annotated[str, typer.Option("--label", help="The label column.")],
    identifiers: Annotated[
        list[str] | None, typer.Option("--id", help="A direct identifier column (repeatable).")
    ] = None,
    name: Annotated[str, typer.Option("--name", help="The task's name.")] = "task",
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the draft here (default: print it).")
    ] = None,
) -> None:
    """Draft a [task] from a sample file, for a person to review: ranges and categories are
    the sample's, not any site's. Never run it on a site's private rows."""
    task, notes = infer_task(sample, label=label, identifiers=identifiers or [], name=name)
    header = [f"# drafted by `fedmodel task infer` from {sample.name}: REVIEW before use"]
    header += [f"# {note}" for note in notes]
    text = (
        "\n".join(header)
        + "\n"
        + _dump_toml({"task": task.model_dump(mode="json", exclude_none=True)})
    )
    if out is None:
        typer.echo(text, nl=False)
        return
    if out.exists():
        raise ConfigError(f"{out}: exists; infer never overwrites a task file")
    atomic_write_text(out, text)
    typer.echo(f"draft task: {out} ({len(task.columns)} columns; review it)")
