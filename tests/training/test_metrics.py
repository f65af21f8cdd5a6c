"""Metrics against hand-computed values; ``as_dict`` is JSON-ready."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedmodel.training.metrics import compute_metrics


def test_multiclass_metrics_by_hand():
    labels = np.array([0, 0, 1, 1, 2, 2])
    preds = np.array([0, 1, 1, 1, 2, 0])
    probs = np.eye(3)[preds] * 0.8 + 0.2 / 3
    m = compute_metrics(labels, probs, loss=0.5)
    assert m.accuracy == pytest.approx(4 / 6)
    # per class precision: 1/2, 2/3, 1; recall: 1/2, 1, 1/2
    assert m.precision == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    assert m.recall == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert m.confusion == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m.auroc is None
    assert m.num_examples == 6
    json.dumps(m.as_dict())


def test_binary_auroc_and_single_class_guard():
    labels = np.array([0, 0, 1, 1])
    p1 = np.array([0.1, 0.6, 0.4, 0.9])
    m = compute_metrics(labels, np.stack([1 - p1, p1], axis=1), loss=0.3)
    assert m.auroc == pytest.approx(0.75)
    one_class = compute_metrics(np.array([1, 1]), np.array([[0.2, 0.8], [0.4, 0.6]]), loss=0.1)
    assert one_class.auroc is None and one_class.accuracy == 1.0


def test_classes_absent_from_a_small_test_set_still_count():
    m = compute_metrics(np.array([0, 0]), np.array([[0.9, 0.05, 0.05]] * 2), loss=0.1)
    assert len(m.confusion) == 3
    assert m.as_dict()["confusion"][2] == [0, 0, 0]
