"""Membership-inference metrics: hand-checkable scores, then a real model that memorised rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from fedmodel.config import DataConfig, DPConfig, ModelConfig, OptimizerConfig, TrainConfig
from fedmodel.data import load_dataset
from fedmodel.models import build_model
from fedmodel.privacy.audit import PrivacyAuditError
from fedmodel.privacy.audit.mia import (
    attack_metrics,
    matched_rows,
    membership_inference,
    per_example_losses,
)
from fedmodel.training import train

CPU = torch.device("cpu")


def test_perfect_separation_and_pure_guessing() -> None:
    members = np.r_[np.ones(100, bool), np.zeros(100, bool)]
    perfect = attack_metrics("x", np.r_[np.full(100, 2.0), np.full(100, 1.0)], members, 0.01)
    assert (perfect.auc, perfect.tpr_at_fpr) == (1.0, 1.0)
    constant = attack_metrics("x", np.zeros(200), members, 0.01)
    assert (constant.auc, constant.tpr_at_fpr) == (0.5, 0.0)


def test_tpr_at_fpr_counts_only_thresholds_within_the_fpr() -> None:
    # 100 non-members score 0..99; members score 100 (5 of them) or -1 (95): above the best
    # non-member only the 5 confident members, so TPR at 1 % FPR (1 false positive) is 5 %.
    scores = np.r_[np.full(5, 100.0), np.full(95, -1.0), np.arange(100.0)]
    members = np.r_[np.ones(100, bool), np.zeros(100, bool)]
    result = attack_metrics("x", scores, members, 0.01)
    assert result.tpr_at_fpr == pytest.approx(0.05)
    assert attack_metrics("x", scores, members, 0.5).tpr_at_fpr == pytest.approx(0.05)


def test_one_class_only_is_an_error() -> None:
    with pytest.raises(PrivacyAuditError, match="both members and non-members"):
        attack_metrics("x", np.zeros(3), np.ones(3, bool), 0.01)


def test_matched_rows_share_one_label_histogram() -> None:
    """A non-IID site (mostly class 0) against balanced held-out rows: the smaller count wins."""
    members = np.array([0] * 50 + [1] * 10 + [2] * 5)
    pool = np.array([0] * 20 + [1] * 30 + [3] * 7)
    mine, theirs = matched_rows(members, pool, np.random.default_rng(0))
    assert np.bincount(members[mine], minlength=4).tolist() == [20, 10, 0, 0]
    assert np.bincount(pool[theirs], minlength=4).tolist() == [20, 10, 0, 0]
    assert len(set(mine.tolist())) == mine.size and len(set(theirs.tolist())) == theirs.size
    again = matched_rows(members, pool, np.random.default_rng(0))
    assert np.array_equal(again[0], mine) and np.array_equal(again[1], theirs)  # seeded


@pytest.fixture(scope="module")
def memorised():
    """An MLP trained without DP for 40 epochs on 100 digits rows: it memorises them."""
    splits = load_dataset(DataConfig(dataset="digits"))
    x, y = splits.train.tensors
    tx, ty = splits.test.tensors
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="mlp", hidden_sizes=[64]), splits.input_shape, 10)
    torch.manual_seed(1)
    reference = build_model(ModelConfig(name="mlp", hidden_sizes=[64]), splits.input_shape, 10)
    cfg = {"train_cfg": TrainConfig(epochs=40, batch_size=50, threads=2, device="cpu"),
           "optim_cfg": OptimizerConfig(lr=0.1), "dp_cfg": DPConfig(enabled=False)}  # fmt: skip
    train(model, TensorDataset(x[:100], y[:100]), **cfg)
    train(reference, TensorDataset(tx[100:200], ty[100:200]), **cfg)  # never sees the targets
    return model, reference, [x[:100], y[:100]], [tx[:100], ty[:100]]


def test_losses_are_per_example_cross_entropy(memorised) -> None:
    model, _, members, _ = memorised
    losses = per_example_losses(model, members, batch_size=32, device=CPU)
    model.eval()
    with torch.no_grad():
        expected = F.cross_entropy(model(members[0]), members[1], reduction="none")
    assert losses.shape == (100,)
    np.testing.assert_allclose(losses, expected.double().numpy(), rtol=1e-5, atol=1e-7)


def test_attacks_see_memorised_rows(memorised) -> None:
    model, reference, members, non_members = memorised
    result = membership_inference(model, reference, members, non_members, batch_size=64, device=CPU)
    assert (result.members, result.non_members) == (100, 100)
    by_name = {a.attack: a for a in result.attacks}
    assert set(by_name) == {"loss", "calibrated"}
    assert by_name["loss"].auc > 0.65 and by_name["calibrated"].auc > 0.65
    assert all(0 <= a.tpr_at_fpr <= 1 and a.fpr == 0.01 for a in result.attacks)


def test_unequal_groups_are_an_error(memorised) -> None:
    model, reference, members, non_members = memorised
    with pytest.raises(PrivacyAuditError, match="equal"):
        membership_inference(
            model,
            reference,
            members,
            [t[:50] for t in non_members],
            batch_size=64,
            device=CPU,
        )
