"""The data owner's cap: the round that would pass it is refused, exactly at the boundary."""

from __future__ import annotations

import math

import pytest

from fedmodel.config import PrivacyBudget
from fedmodel.crypto.keys import generate_signing_key
from fedmodel.privacy.accountant import epsilon_from_history, grouped_history
from fedmodel.privacy.budget import BudgetError, check_round, cumulative_epsilon
from fedmodel.privacy.ledger import Ledger

PLANNED = (1.5, 0.02, 10)
DELTA = 1e-5
BOUNDARY = 3  # rounds 1..3 fit the cap exactly, round 4 would pass it


def _epsilon_after(rounds: int) -> float:
    return epsilon_from_history([(PLANNED[0], PLANNED[1], PLANNED[2] * rounds)], DELTA)


def _run_rounds(ledger: Ledger, cap: PrivacyBudget, rounds: int) -> list[bool]:
    """The client loop: check before training, then record the round or the refusal."""
    allowed = []
    for r in range(1, rounds + 1):
        decision = check_round(ledger.history(), PLANNED, cap, "prv", delta=DELTA)
        if decision.allowed:
            ledger.append_round(
                "run", r, *PLANNED, max_grad_norm=1.0, delta=DELTA, dataset_size=200
            )
        else:
            ledger.append_refusal("run", r, decision.reason, decision.projected_epsilon)
        allowed.append(decision.allowed)
    return allowed


def test_refusal_happens_exactly_at_the_boundary_round(tmp_path):
    cap = PrivacyBudget(epsilon=_epsilon_after(BOUNDARY), delta=DELTA)  # round 3 lands ON the cap
    assert _epsilon_after(BOUNDARY + 1) > cap.epsilon
    ledger = Ledger(tmp_path / "ledger", generate_signing_key(), node="node-0")
    assert _run_rounds(ledger, cap, BOUNDARY + 1) == [True] * BOUNDARY + [False]
    entries = ledger.entries()
    assert [e.kind for e in entries] == ["round"] * BOUNDARY + ["refusal"]
    assert entries[BOUNDARY - 1].epsilon == cap.epsilon  # spent everything, never more
    assert entries[-1].projected_epsilon == _epsilon_after(BOUNDARY + 1)
    assert "would exceed" in entries[-1].reason
    assert ledger.epsilon(DELTA) == cap.epsilon


def test_a_cap_one_ulp_below_refuses_the_boundary_round():
    cap = PrivacyBudget(epsilon=math.nextafter(_epsilon_after(BOUNDARY), 0), delta=DELTA)
    history = [PLANNED] * (BOUNDARY - 1)
    decision = check_round(history, PLANNED, cap)
    assert not decision.allowed
    assert decision.spent_epsilon == _epsilon_after(BOUNDARY - 1)
    assert decision.remaining == cap.epsilon - decision.spent_epsilon


def test_decision_fields_when_allowed():
    cap = PrivacyBudget(epsilon=5.0, delta=DELTA)
    decision = check_round([], PLANNED, cap, "rdp")
    assert decision.allowed and decision.spent_epsilon == 0.0 and decision.remaining == 5.0
    assert decision.projected_epsilon == epsilon_from_history([PLANNED], DELTA, "rdp")
    assert decision.cap_epsilon == 5.0 and "within" in decision.reason


def test_run_delta_above_the_cap_delta_is_refused():
    cap = PrivacyBudget(epsilon=100.0, delta=DELTA)
    refused = check_round([], PLANNED, cap, delta=1e-4)
    assert not refused.allowed and "delta" in refused.reason
    assert check_round([], PLANNED, cap, delta=DELTA).allowed


def test_a_round_with_tiny_noise_is_refused_without_exhausting_memory():
    # noise 0.05 at q=0.5 would make Opacus's PRV grid need terabytes; the accountant reports
    # the RDP bound instead (never below PRV), which is far past any cap: no training
    decision = check_round([], (0.05, 0.5, 1000), PrivacyBudget(epsilon=100.0, delta=DELTA))
    assert not decision.allowed
    assert decision.projected_epsilon > 100.0


@pytest.mark.parametrize(
    ("planned", "accountant", "match"),
    [
        ((0.0, 0.05, 10), "prv", "planned round"),
        ((1.0, 1.5, 10), "prv", "planned round"),
        ((1.0, 0.05), "prv", "planned round"),
        (PLANNED, "gdp", "accountant"),
    ],
)
def test_bad_input_is_a_budget_error(planned, accountant, match):
    with pytest.raises(BudgetError, match=match):
        check_round([], planned, PrivacyBudget(epsilon=1.0, delta=DELTA), accountant)


def test_grouping_keeps_the_history_and_the_epsilon():
    history = [(1.0, 0.05, 10), (2.0, 0.05, 5), (1.0, 0.05, 7), (1.0, 0.05, 0)]
    assert grouped_history(history) == [(1.0, 0.05, 17), (2.0, 0.05, 5)]
    assert cumulative_epsilon(history, DELTA) == pytest.approx(
        epsilon_from_history(history, DELTA), rel=1e-9
    )
