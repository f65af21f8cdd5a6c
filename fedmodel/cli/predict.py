"""``fedmodel predict MODEL INPUT``: class predictions from an exported model.

MODEL is a run folder (its ``model/``), a model folder (``model-int8/`` from ``fedmodel export
--quantize int8``, a distilled ``students/NAME/``) or a ``model.safetensors`` file. INPUT
is a ``.npy`` array shaped like the model's input (images, preprocessed tabular rows), a ``.csv``
of preprocessed numeric features, or a ``.txt`` file with one text per line for text models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fedmodel.cli.errors import cli_errors


@cli_errors
def predict(
    model: Annotated[Path, typer.Argument(help="run folder, model folder or model.safetensors")],
    inputs: Annotated[Path, typer.Argument(help=".npy, .csv (numeric) or .txt (one text a line)")],
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
) -> None:
    """Predict classes for INPUT with the exported MODEL."""
    from fedmodel.training.export import load_exported, model_dir_of
    from fedmodel.training.inference import predict as run_predict
    from fedmodel.training.inputs import read_inputs

    model_dir = model if model.is_file() else model_dir_of(model)
    net, meta = load_exported(model_dir)
    tensors = read_inputs(inputs, meta)
    labels, probs = run_predict(net, tensors)
    names = meta.get("class_names") or [str(i) for i in range(probs.shape[1])]
    rows = [
        {"index": i, "label": int(lbl), "class": names[int(lbl)], "probability": float(p[lbl])}
        for i, (lbl, p) in enumerate(zip(labels, probs, strict=True))
    ]
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    table = Table(title=f"{len(rows)} predictions")
    for col in ("index", "label", "class", "probability"):
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()))
    Console().print(table)
