"""Dirac canaries through the real DP-SGD path (fedmodel.training.train, Opacus, no mocks).

A tiny site (300 digits rows, an MLP) is audited twice per clipping mode: with its configured
noise the bound must stay at or under the accounted epsilon, and with the noise taken out the
same audit must find a bound clearly above it: the control that shows the audit has teeth.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import Subset

from fedmodel.config import DataConfig, DPConfig, ModelConfig, OptimizerConfig, TrainConfig
from fedmodel.data import load_dataset
from fedmodel.models import build_model
from fedmodel.privacy.audit import PrivacyAuditError
from fedmodel.privacy.audit.canary import (
    CANARY_GAIN,
    EMPTY_SLOT,
    REAL_ROW,
    CanaryModel,
    Mechanism,
    audit_rows,
    run_canary_audit,
)

SITE_ROWS, CANARIES, K_PLUS = 300, 200, 40
# sigma 1, q = 1/10, 3 epochs (30 steps): accounted epsilon 4.19 at delta 1e-5 (PRV)
MECHANISM = Mechanism(1.0, 0.1, 30, 1.0, 1e-5, "prv", "fast")


@pytest.fixture(scope="module")
def site():
    splits = load_dataset(DataConfig(dataset="digits"))
    return splits, Subset(splits.train, range(SITE_ROWS))


def _model(splits) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(name="mlp", hidden_sizes=[16]), splits.input_shape, 10)


def _audit(site, *, noise_off: bool, clipping: str = "fast", seed: int = 0):
    splits, rows = site
    mechanism = Mechanism(**{**MECHANISM.__dict__, "clipping": clipping})
    return run_canary_audit(
        _model(splits),
        rows,
        mechanism,
        num_classes=10,
        train_cfg=TrainConfig(batch_size=30, threads=2, device="cpu"),
        optim_cfg=OptimizerConfig(lr=0.1),
        dp_cfg=DPConfig(noise_multiplier=1.0),
        canaries=CANARIES,
        k_plus=K_PLUS,
        k_minus=0,
        seed=seed,
        noise_off=noise_off,
    )


@pytest.mark.parametrize("clipping", ["fast", "per-sample"])
def test_noise_off_bound_is_far_above_the_configured_one(site, clipping: str) -> None:
    dp = _audit(site, noise_off=False, clipping=clipping)
    off = _audit(site, noise_off=True, clipping=clipping)
    assert dp.sample_rate == off.sample_rate == 0.1 and dp.steps == off.steps == 30
    assert dp.rows == off.rows == SITE_ROWS + CANARIES
    assert dp.epsilon_accounted == pytest.approx(MECHANISM.epsilon())
    # configured noise: the accountant's claim survives
    assert dp.epsilon_lower_bound <= dp.epsilon_accounted and not dp.refutes_claim
    # no noise: every top guess is right (a sampled canary moves its column, nothing else does)
    assert off.correct == off.guesses == K_PLUS
    assert off.epsilon_lower_bound == pytest.approx(off.epsilon_ceiling)
    assert off.epsilon_lower_bound > dp.epsilon_lower_bound + 1.5


def test_other_draws_keep_the_configured_bound_under_the_claim(site) -> None:
    for seed in (1, 2):
        audit = _audit(site, noise_off=False, seed=seed)
        assert audit.epsilon_lower_bound <= audit.epsilon_accounted, seed


def test_canary_gradient_is_its_own_column_and_real_rows_are_untouched(site) -> None:
    """The Dirac claim, checked with plain autograd on one row of each kind."""
    splits, rows = site
    labels = torch.tensor([3, 7])
    data = audit_rows(Subset(rows, range(2)), labels, np.array([True, False]))
    model = CanaryModel(_model(splits), 2, 10, scale=CANARY_GAIN / (0.9**0.5))
    plain = _model(splits)
    for index, kind in ((0, REAL_ROW), (2, 0), (3, EMPTY_SLOT)):
        *inputs, slot, label = (t[index : index + 1] for t in data.tensors)
        assert int(slot) == kind
        model.zero_grad()
        F.cross_entropy(model(*inputs, slot), label).backward()
        table = model.canary.weight.grad
        site_grads = [p.grad for p in model.model.parameters()]
        if kind == REAL_ROW:  # exactly the unwrapped model's gradient; the table untouched
            plain.zero_grad()
            F.cross_entropy(plain(*inputs), label).backward()
            for ours, theirs in zip(site_grads, plain.parameters(), strict=True):
                assert torch.equal(ours, theirs.grad)
            assert not table.any()
        elif kind == 0:  # only column 0 of the table, norm CANARY_GAIN (C = 1) before clipping
            assert all(not g.any() for g in site_grads)
            assert not table[:, 1].any()
            assert float(table[:, 0].norm()) == pytest.approx(CANARY_GAIN, rel=1e-5)
        else:  # an excluded canary's slot: no gradient anywhere
            assert all(not g.any() for g in site_grads) and not table.any()


def test_dataset_size_does_not_depend_on_the_draw(site) -> None:
    _, rows = site
    labels = torch.zeros(CANARIES, dtype=torch.long)
    sizes = {len(audit_rows(rows, labels, np.random.default_rng(s).random(CANARIES) < 0.5))
             for s in range(3)}  # fmt: skip
    assert sizes == {SITE_ROWS + CANARIES}


@pytest.mark.parametrize(
    ("mechanism", "match"),
    [
        (Mechanism(1.0, 0.3, 30, 1.0, 1e-5, "prv", "fast"), "sample rate"),
        (Mechanism(1.0, 0.1, 25, 1.0, 1e-5, "prv", "fast"), "whole epochs"),
    ],
)
def test_a_mechanism_the_loader_cannot_run_is_an_error(site, mechanism, match) -> None:
    splits, rows = site
    with pytest.raises(PrivacyAuditError, match=match):
        run_canary_audit(
            _model(splits),
            rows,
            mechanism,
            num_classes=10,
            train_cfg=TrainConfig(),
            optim_cfg=OptimizerConfig(),
            dp_cfg=DPConfig(noise_multiplier=1.0),
            canaries=CANARIES,
            k_plus=K_PLUS,
            k_minus=0,
        )
