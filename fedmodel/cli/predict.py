"""``fedmodel predict MODEL INPUT``: class predictions from an exported model.

MODEL is a run folder (its ``model/``), a model folder or a ``model.safetensors`` file. INPUT
is a ``.npy`` array shaped like the model's input (images, preprocessed tabular rows), a ``.csv``
of preprocessed numeric features, or a ``.txt`` file with one text per line for text models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer
from rich.console import Console
from rich.table import Table

from fedmodel.cli.errors import cli_errors
from fedmodel.errors import FedmodelError


class PredictInputError(FedmodelError):
    """The input file cannot be turned into model inputs."""


@cli_errors
def predict(
    model: Annotated[Path, typer.Argument(help="run folder, model folder or model.safetensors")],
    inputs: Annotated[Path, typer.Argument(help=".npy, .csv (numeric) or .txt (one text a line)")],
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
) -> None:
    """Predict classes for INPUT with the exported MODEL."""
    from fedmodel.training.export import load_exported
    from fedmodel.training.inference import predict as run_predict

    model_dir = model / "model" if (model / "model").is_dir() else model
    net, meta = load_exported(model_dir)
    tensors = _read_inputs(inputs, meta)
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


def _read_inputs(path: Path, meta: dict[str, Any]) -> list[torch.Tensor]:
    if not path.is_file():
        raise PredictInputError(f"{path}: no such input file")
    shape = tuple(int(d) for d in meta["input_shape"])
    match path.suffix.lower():
        case ".npy":
            array = _load_npy(path)
        case ".csv":
            try:
                array = np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2)
            except ValueError as err:
                raise PredictInputError(f"{path}: not a numeric CSV: {err}") from None
        case ".txt":
            return _tokenised(path, meta)
        case other:
            raise PredictInputError(f"{path}: unsupported input type {other!r}")
    if array.shape[1:] != shape:
        try:
            array = array.reshape((-1, *shape))
        except ValueError:
            raise PredictInputError(
                f"{path}: rows of shape {array.shape[1:]} do not fit the model input {shape}"
            ) from None
    return [torch.as_tensor(array, dtype=torch.float32)]


def _load_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as err:
        raise PredictInputError(f"{path}: not a plain .npy array: {err}") from None
    if array.ndim < 2:
        array = array[None]
    return array


def _tokenised(path: Path, meta: dict[str, Any]) -> list[torch.Tensor]:
    from fedmodel.data import tokenize_texts

    if meta.get("model", {}).get("name") != "minilm":
        raise PredictInputError(f"{path}: text input needs a text model")
    texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise PredictInputError(f"{path}: no text lines")
    ids, mask = tokenize_texts(texts, max_length=int(meta["input_shape"][0]))
    return [ids, mask]
