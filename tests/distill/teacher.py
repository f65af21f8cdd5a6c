"""A small run folder with a trained MNIST CNN as its final model, for the distill tests.

The teacher is trained here with a few hundred plain SGD steps on a seeded slice of MNIST's
training split (the "site rows"), which takes seconds; what is under test - quantised export,
distillation, their records - then runs on a real trained model. The folder has what a finished
simulation exports: ``model/model.safetensors`` + ``model.json`` (with ``task`` and ``data``)
and a ``run.json`` carrying the model hash.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fedmodel.config import DataConfig, ModelConfig
from fedmodel.data import load_dataset
from fedmodel.io import atomic_write_json
from fedmodel.models import build_model
from fedmodel.training.export import export_model

TRAIN_ROWS, STEPS, BATCH = 2000, 150, 64


@dataclass(frozen=True)
class TeacherRun:
    """The run folder, the images its model trained on (the sites') and some test images."""

    run_dir: Path
    site_images: torch.Tensor
    test_images: torch.Tensor
    model_hash: str


def build_teacher_run(root: Path) -> TeacherRun:
    """``root/run`` with the trained CNN exported as the run's final model."""
    data = DataConfig(dataset="mnist", train_limit=TRAIN_ROWS, test_limit=1000, seed=0)
    splits = load_dataset(data)
    x, y = splits.train.tensors
    cfg = ModelConfig(name="cnn")
    model = build_model(cfg, splits.input_shape, splits.num_classes, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(STEPS):
        rows = torch.randint(0, len(y), (BATCH,), generator=generator)
        loss = F.cross_entropy(model(x[rows]), y[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    run_dir = root / "run"
    weights = export_model(
        run_dir / "model",
        model,
        model_cfg=cfg,
        input_shape=splits.input_shape,
        num_classes=splits.num_classes,
        class_names=splits.class_names,
        extra={"task": "image", "data": data.model_dump(mode="json")},
    )
    model_hash = hashlib.sha256(weights.read_bytes()).hexdigest()
    atomic_write_json(run_dir / "run.json", {"model_hash": model_hash, "status": "finished"})
    return TeacherRun(run_dir, x, splits.test.tensors[0], model_hash)


def image_digests(images: torch.Tensor) -> set[str]:
    """One digest per image's exact pixel bytes, to find a row in another set."""
    arrays = np.ascontiguousarray(images.numpy())
    return {hashlib.sha256(a.tobytes()).hexdigest() for a in arrays}
