"""Public rows the server owns, split into distillation rows and evaluation rows.

A public set is never site data:

* ``mnist-test``: MNIST's test split, which the coordinator holds (its server evaluation uses
  it); the sites train on the training split only.
* ``rotten-tomatoes-test``: the snippets the run's own data config holds out from training (its
  ``test_fraction`` and ``seed``), which the coordinator evaluates on; the sites' rows are the rest.
* a file (``.npy`` images or rows, numeric ``.csv``, ``.txt`` one snippet a line): unlabelled
  rows the server brings itself; their evaluation reports agreement with the teacher only.

Each set is split with a seeded, label-stratified hold-out (a plain seeded permutation for an
unlabelled file) into rows the student learns from and rows it is evaluated on, so no row is
in both. The labels of the distillation rows are never read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fedmodel.config import DataConfig
from fedmodel.distill.errors import DistillError
from fedmodel.distill.kd import DistillConfig

PUBLIC_SETS = ("mnist-test", "rotten-tomatoes-test")
_TEACHER_NEEDS = {"mnist-test": "an MNIST image model", "rotten-tomatoes-test": "a MiniLM model"}


@dataclass(frozen=True)
class PublicRows:
    """Distillation inputs and evaluation inputs (with labels where the set has them).

    ``distill_rows`` / ``eval_rows`` index the public source (the MNIST test split, the run's
    held-out snippets, the file's rows), so anyone can check they are disjoint and where from.
    """

    source: str
    description: str
    distill: list[Tensor]
    evaluate: list[Tensor]
    eval_labels: Tensor | None
    distill_rows: np.ndarray
    eval_rows: np.ndarray

    def record(self) -> dict[str, Any]:
        """What the student's sidecar says about its data (no row contents, only indices)."""
        return {
            "source": self.source,
            "description": self.description,
            "distill_rows": len(self.distill_rows),
            "eval_rows": len(self.eval_rows),
            "distill_rows_sha256": rows_sha256(self.distill_rows),
            "eval_rows_sha256": rows_sha256(self.eval_rows),
            "labels_used_for_training": False,
        }


def rows_sha256(rows: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(rows, dtype=np.int64).tobytes()).hexdigest()


def load_public(spec: str, meta: Mapping[str, Any], cfg: DistillConfig) -> PublicRows:
    """The public set ``spec`` (a name in ``PUBLIC_SETS`` or a file) for the teacher ``meta``."""
    if spec in PUBLIC_SETS:
        _check_teacher(spec, meta)
        if spec == "mnist-test":
            return _mnist_test(cfg)
        return _rotten_tomatoes_test(meta, cfg)
    path = Path(spec)
    if not path.is_file():
        raise DistillError(
            f"--data {spec}: neither a public set ({', '.join(PUBLIC_SETS)}) nor a file"
        )
    return _from_file(path, meta, cfg)


def _check_teacher(spec: str, meta: Mapping[str, Any]) -> None:
    from fedmodel.data.mnist import MNIST_CLASSES
    from fedmodel.data.rotten_tomatoes import RT_CLASSES

    names = list(meta.get("class_names") or [])
    fits = {
        "mnist-test": names == list(MNIST_CLASSES) and list(meta["input_shape"]) == [1, 28, 28],
        "rotten-tomatoes-test": names == list(RT_CLASSES) and meta["model"]["name"] == "minilm",
    }[spec]
    if not fits:
        raise DistillError(f"--data {spec}: needs {_TEACHER_NEEDS[spec]} as the teacher")


def split_rows(labels: np.ndarray | None, n: int, cfg: DistillConfig) -> tuple[np.ndarray, ...]:
    """(distill, eval) row indices: stratified by label when there are labels, disjoint."""
    from fedmodel.data.split import holdout_split, limit_rows

    if labels is None:
        order = np.random.default_rng([cfg.seed, 7]).permutation(n)
        cut = n - max(1, round(cfg.eval_fraction * n))
        distill, evaluate = np.sort(order[:cut]), np.sort(order[cut:])
        if cfg.limit is not None:
            distill, evaluate = distill[: cfg.limit], evaluate[: cfg.limit]
        return distill, evaluate
    distill, evaluate = holdout_split(labels, cfg.eval_fraction, cfg.seed)
    keep_d = limit_rows(labels[distill], cfg.limit, cfg.seed, 11)
    keep_e = limit_rows(labels[evaluate], cfg.limit, cfg.seed, 12)
    return distill[keep_d], evaluate[keep_e]


def _mnist_test(cfg: DistillConfig) -> PublicRows:
    from fedmodel.data.mnist import load_mnist_arrays
    from fedmodel.data.preprocess import normalise_images

    arrays = load_mnist_arrays()
    distill, evaluate = split_rows(arrays.y_test, len(arrays.y_test), cfg)
    images = normalise_images(torch.from_numpy(arrays.x_test))
    return PublicRows(
        source="mnist-test",
        description="MNIST test split (the coordinator's; the sites train on the training split)",
        distill=[images[torch.from_numpy(distill)]],
        evaluate=[images[torch.from_numpy(evaluate)]],
        eval_labels=torch.from_numpy(arrays.y_test[evaluate]),
        distill_rows=distill,
        eval_rows=evaluate,
    )


def _rotten_tomatoes_test(meta: Mapping[str, Any], cfg: DistillConfig) -> PublicRows:
    from fedmodel.data.rotten_tomatoes import load_rotten_tomatoes
    from fedmodel.data.split import holdout_split
    from fedmodel.data.tokenize import tokenize_texts

    data = DataConfig.model_validate(meta.get("data") or {"dataset": "rotten-tomatoes"})
    texts, labels = load_rotten_tomatoes()
    _, held_out = holdout_split(labels, data.test_fraction, data.seed)  # never a site's row
    distill, evaluate = split_rows(labels[held_out], len(held_out), cfg)
    length = int(meta["input_shape"][0])
    return PublicRows(
        source="rotten-tomatoes-test",
        description=f"Rotten Tomatoes snippets the run held out from training "
        f"(test_fraction {data.test_fraction}, seed {data.seed})",
        distill=list(tokenize_texts(list(texts[held_out[distill]]), length)),
        evaluate=list(tokenize_texts(list(texts[held_out[evaluate]]), length)),
        eval_labels=torch.from_numpy(labels[held_out[evaluate]]),
        distill_rows=held_out[distill],
        eval_rows=held_out[evaluate],
    )


def _from_file(path: Path, meta: Mapping[str, Any], cfg: DistillConfig) -> PublicRows:
    from fedmodel.training.inputs import read_inputs

    tensors = read_inputs(path, dict(meta))
    n = int(tensors[0].shape[0])
    if n < 2:
        raise DistillError(f"--data {path}: {n} row(s); need rows to learn from and to evaluate")
    distill, evaluate = split_rows(None, n, cfg)
    return PublicRows(
        source=str(path),
        description=f"unlabelled rows from {path.name} (the server's own file)",
        distill=[t[torch.from_numpy(distill)] for t in tensors],
        evaluate=[t[torch.from_numpy(evaluate)] for t in tensors],
        eval_labels=None,
        distill_rows=distill,
        eval_rows=evaluate,
    )
