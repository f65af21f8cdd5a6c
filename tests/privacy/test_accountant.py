"""The accountant module: calibration, sampling plan, guards, history grouping."""

from __future__ import annotations

import pytest
import torch
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.data_loader import DPDataLoader
from torch.utils.data import DataLoader, TensorDataset

from fedmodel.privacy.accountant import (
    AccountingError,
    calibrate_noise,
    epsilon_from_history,
    grouped_history,
    sampling_plan,
)

DELTA = 1e-5


@pytest.mark.parametrize(("n", "batch"), [(100, 32), (512, 32), (999, 7), (30, 64)])
def test_sampling_plan_matches_opacus_poisson_loader(n, batch):
    loader = DPDataLoader.from_data_loader(
        DataLoader(TensorDataset(torch.zeros(n, 1)), batch_size=batch)
    )
    assert sampling_plan(n, batch, epochs=3) == (loader.sample_rate, 3 * len(loader))


def test_epsilon_equals_opacus_accountants_on_the_same_history():
    history = [(1.1, 0.05, 40), (0.9, 0.05, 20), (1.1, 0.05, 40)]
    for name, cls in (("prv", PRVAccountant), ("rdp", RDPAccountant)):
        acc = cls()
        acc.history = list(history)
        assert epsilon_from_history(history, DELTA, name) == pytest.approx(
            acc.get_epsilon(DELTA), rel=1e-6
        )


def test_grouping_sums_steps_per_mechanism():
    assert grouped_history([(1.0, 0.1, 5), (2.0, 0.1, 3), (1.0, 0.1, 7)]) == [
        (1.0, 0.1, 12),
        (2.0, 0.1, 3),
    ]


def test_calibration_reaches_target_on_all_planned_steps():
    q, steps = 1 / 16, 16 * 5  # 5 rounds of 16 steps
    noise = calibrate_noise(3.0, DELTA, q, steps, "prv")
    eps = epsilon_from_history([(noise, q, steps)], DELTA, "prv")
    assert 2.9 <= eps <= 3.0
    # one round at that noise spends much less: calibrating per round would overshoot 5x-ish
    assert epsilon_from_history([(noise, q, 16)], DELTA, "prv") < 0.6 * eps


def test_calibration_counts_what_was_already_spent():
    q = 1 / 16
    prior = [(1.0, q, 32)]
    noise = calibrate_noise(4.0, DELTA, q, 32, "rdp", prior_history=prior)
    assert epsilon_from_history([*prior, (noise, q, 32)], DELTA, "rdp") <= 4.0
    with pytest.raises(AccountingError, match="already spent"):
        calibrate_noise(0.5, DELTA, q, 32, "rdp", prior_history=prior)


def test_tiny_noise_reports_a_conservative_bound_without_exhausting_memory():
    # PRV would try to allocate tens of GB here; RDP (never below PRV) is reported instead
    history = [(0.01, 1 / 32, 64)]
    eps = epsilon_from_history(history, DELTA, "prv")
    assert eps == epsilon_from_history(history, DELTA, "rdp")
    assert eps > 1000


@pytest.mark.parametrize("bad", [[(0.0, 0.1, 3)], [(1.0, 1.5, 3)], [(1.0, 0.1)]])
def test_malformed_history_is_an_accounting_error(bad):
    with pytest.raises(AccountingError):
        epsilon_from_history(bad, DELTA)
