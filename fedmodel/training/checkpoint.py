"""Weights on disk: a ``.safetensors`` file plus a JSON sidecar describing it.

safetensors holds only tensors (no pickle, so loading a checkpoint cannot run code); the sidecar
holds everything a reader needs to rebuild and trust the model - config, input shape, classes,
metrics - and the sha256 of the weights file, so a sidecar that does not belong to its weights
(a crash between the two atomic writes, a copied file) is detected on load.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor

from fedmodel.io import atomic_write_bytes, atomic_write_json
from fedmodel.training.errors import TrainingError

WEIGHTS_FORMAT = "fedmodel-weights/1"


def sidecar_path(path: str | Path) -> Path:
    """``round-0003.safetensors`` -> ``round-0003.json``."""
    return Path(path).with_suffix(".json")


def save_weights(
    path: str | Path, state_dict: Mapping[str, Tensor], meta: Mapping[str, Any]
) -> Path:
    """Write ``path`` (safetensors) and its sidecar atomically; returns the weights path.

    Tensors are copied to contiguous CPU storage first: safetensors refuses shared or strided
    storage, and a state dict taken from a GPU model must load on a CPU-only server.
    """
    target = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    blob = save_safetensors(tensors)
    sidecar = {
        **dict(meta),
        "format": WEIGHTS_FORMAT,
        "weights_file": target.name,
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
    }
    atomic_write_bytes(target, blob)
    atomic_write_json(sidecar_path(target), sidecar)
    return target


def load_weights(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(state_dict, meta)`` from ``save_weights``; any mismatch is a ``TrainingError``."""
    target = Path(path)
    meta_path = sidecar_path(target)
    if not target.is_file():
        raise TrainingError(f"{target}: no such weights file")
    if not meta_path.is_file():
        raise TrainingError(f"{meta_path}: sidecar for {target.name} is missing")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TrainingError(f"{meta_path}: malformed JSON: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != WEIGHTS_FORMAT:
        raise TrainingError(f"{meta_path}: not a fedmodel weights sidecar ({WEIGHTS_FORMAT})")
    blob = target.read_bytes()
    if hashlib.sha256(blob).hexdigest() != meta.get("weights_sha256"):
        raise TrainingError(f"{target}: sha256 does not match {meta_path.name}")
    try:
        state = load_safetensors(blob)
    except (SafetensorError, ValueError) as err:
        raise TrainingError(f"{target}: unreadable safetensors file: {err}") from None
    return dict(state), meta


def state_dict_equal(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> bool:
    """Same keys, shapes, dtypes and values (bitwise); for round-trip checks."""
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and torch.equal(a[k].cpu(), b[k].cpu()) for k in a
    )
