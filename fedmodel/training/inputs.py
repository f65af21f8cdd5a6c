"""Model inputs from a file: ``.npy`` arrays, numeric ``.csv`` rows, ``.txt`` texts (one a line).

Shared by ``fedmodel predict`` (the rows to classify) and ``fedmodel distill`` (a public set of
unlabelled rows the server owns). The exported model's sidecar says what shape the inputs must
have and whether the model takes text. ``.npy`` files are read without pickle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedmodel.errors import FedmodelError


class InputFileError(FedmodelError):
    """The input file cannot be turned into model inputs."""


def read_inputs(path: Path, meta: dict[str, Any]) -> list[torch.Tensor]:
    if not path.is_file():
        raise InputFileError(f"{path}: no such input file")
    shape = tuple(int(d) for d in meta["input_shape"])
    match path.suffix.lower():
        case ".npy":
            array = _load_npy(path)
        case ".csv":
            try:
                array = np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2)
            except ValueError as err:
                raise InputFileError(f"{path}: not a numeric CSV: {err}") from None
        case ".txt":
            return _tokenised(path, meta)
        case other:
            raise InputFileError(f"{path}: unsupported input type {other!r}")
    if array.shape[1:] != shape:
        try:
            array = array.reshape((-1, *shape))
        except ValueError:
            raise InputFileError(
                f"{path}: rows of shape {array.shape[1:]} do not fit the model input {shape}"
            ) from None
    return [torch.as_tensor(array, dtype=torch.float32)]


def _load_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as err:
        raise InputFileError(f"{path}: not a plain .npy array: {err}") from None
    if array.ndim < 2:
        array = array[None]
    return array


def _tokenised(path: Path, meta: dict[str, Any]) -> list[torch.Tensor]:
    from fedmodel.data import tokenize_texts

    if meta.get("model", {}).get("name") != "minilm":
        raise InputFileError(f"{path}: text input needs a text model")
    texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise InputFileError(f"{path}: no text lines")
    ids, mask = tokenize_texts(texts, max_length=int(meta["input_shape"][0]))
    return [ids, mask]
