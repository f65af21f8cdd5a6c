"""A trained model as a folder ``fedmodel predict`` loads: ``model.safetensors`` + ``model.json``.

The sidecar records the ``ModelConfig``, input shape and class names, so ``load_exported``
rebuilds the architecture with ``build_model`` and loads the weights strictly - no pickled
modules, no code from the file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from torch import nn

from fedmodel.config import ModelConfig
from fedmodel.models import build_model
from fedmodel.training.checkpoint import load_weights, save_weights
from fedmodel.training.errors import TrainingError

WEIGHTS_NAME = "model.safetensors"
RUN_MODEL_DIR = "model"


def model_dir_of(path: str | Path) -> Path:
    """The model folder ``path`` names: a run folder's ``model/``, or a model folder itself.

    A folder holding neither is a ``TrainingError`` naming it, so every command that takes a
    run folder fails the same one-line way on a run that exported no model.
    """
    given = Path(path)
    for candidate in (given / RUN_MODEL_DIR, given):
        if (candidate / WEIGHTS_NAME).is_file():
            return candidate
    raise TrainingError(
        f"{given}: no exported model ({RUN_MODEL_DIR}/{WEIGHTS_NAME}); did the run finish?"
    )


def export_model(
    out_dir: str | Path,
    model: nn.Module,
    *,
    model_cfg: ModelConfig,
    input_shape: Sequence[int],
    num_classes: int,
    class_names: Sequence[str] | None = None,
    metrics: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``out_dir/model.safetensors`` and ``out_dir/model.json``; returns the weights path."""
    names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise TrainingError(f"export: {len(names)} class names for {num_classes} classes")
    meta = {
        **dict(extra or {}),
        "model": model_cfg.model_dump(mode="json"),
        "input_shape": [int(d) for d in input_shape],
        "num_classes": int(num_classes),
        "class_names": names,
        "metrics": dict(metrics or {}),
    }
    return save_weights(Path(out_dir) / WEIGHTS_NAME, model.state_dict(), meta)


def load_exported(model_dir: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the exported model (eval mode, CPU) and return it with its sidecar.

    An int8 copy (``fedmodel export --quantize int8``, :mod:`fedmodel.training.quantize`) is
    rebuilt the same way, quantised, and loaded with its int8 weights.
    """
    directory = Path(model_dir)
    weights = directory / WEIGHTS_NAME if directory.is_dir() else directory
    state, meta = load_weights(weights)
    try:
        cfg = ModelConfig.model_validate(meta["model"])
        input_shape = tuple(int(d) for d in meta["input_shape"])
        num_classes = int(meta["num_classes"])
    except (KeyError, TypeError, ValueError, ValidationError) as err:
        raise TrainingError(f"{weights}: sidecar lacks a valid model description: {err}") from None
    model = build_model(cfg, input_shape, num_classes, factory_sha256=cfg.factory_sha256)
    if "quantization" in meta:  # an int8 copy: quantise the rebuilt model, then load (CPU only)
        from fedmodel.training.quantize import load_quantized_state

        return load_quantized_state(model, meta, state, str(weights)), meta
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise TrainingError(f"{weights}: weights do not fit the described model: {first}") from None
    return model.eval(), meta
