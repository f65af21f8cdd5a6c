"""Classification metrics, computed once from labels and predicted probabilities.

Macro averages weight every class equally, which is what a reviewer of an imbalanced medical or
credit task needs to see; AUROC is reported for binary tasks only (one-vs-rest AUROC on a
handful of classes mostly restates accuracy).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score


@dataclass(frozen=True)
class EvalMetrics:
    loss: float
    accuracy: float
    precision: float
    recall: float
    f1: float
    auroc: float | None
    confusion: list[list[int]]
    num_examples: int

    def as_dict(self) -> dict:
        """Plain floats/ints/lists (NaN becomes None) ready for ``json.dumps``."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, float) and not math.isfinite(value):
                out[key] = None
        return out


def compute_metrics(
    labels: np.ndarray, probabilities: np.ndarray, loss: float, num_classes: int | None = None
) -> EvalMetrics:
    """Metrics for integer ``labels`` [N] against ``probabilities`` [N, C] (rows sum to 1)."""
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    classes = num_classes or probabilities.shape[1]
    n = int(labels.shape[0])
    if n == 0:
        nan = float("nan")
        return EvalMetrics(nan, nan, nan, nan, nan, None, [[0] * classes] * classes, 0)
    preds = probabilities.argmax(axis=1)
    label_ids = list(range(classes))
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, preds, labels=label_ids, average="macro", zero_division=0
    )
    return EvalMetrics(
        loss=float(loss),
        accuracy=float((preds == labels).mean()),
        precision=float(precision),
        recall=float(recall),
        f1=float(f1),
        auroc=binary_auroc(labels, probabilities),
        confusion=confusion_matrix(labels, preds, labels=label_ids).astype(int).tolist(),
        num_examples=n,
    )


def binary_auroc(labels: np.ndarray, probabilities: np.ndarray) -> float | None:
    """AUROC of the positive-class probability; None unless binary with both classes present."""
    if probabilities.shape[1] != 2 or len(np.unique(labels)) != 2:
        return None
    return float(roc_auc_score(labels, probabilities[:, 1]))
