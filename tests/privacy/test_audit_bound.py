"""The one-run lower bound (Steinke, Nasr & Jagielski 2023) against values computed another way.

The oracles here use only ``math``: binomial tails summed from ``math.comb``, the theorem's
delta term as a loop over ``i``, and the closed form of the all-correct, delta = 0 case
(``q^r = alpha``), so a slip in the scipy-based implementation cannot hide in its own oracle.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedmodel.privacy.audit import PrivacyAuditError
from fedmodel.privacy.audit.bound import count_guesses, epsilon_lower_bound, p_value


def binomial_tail(r: int, v: int, q: float) -> float:
    """P[Binomial(r, q) >= v], summed term by term."""
    return sum(math.comb(r, j) * q**j * (1 - q) ** (r - j) for j in range(max(v, 0), r + 1))


def theorem_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """f(v) + 2 m delta max_i (f(v - i) - f(v)) / i, written out as the theorem states it."""
    q = math.exp(eps) / (1 + math.exp(eps))
    f = lambda k: binomial_tail(r, k, q)  # noqa: E731
    worst = max(((f(v - i) - f(v)) / i for i in range(1, v + 1)), default=0.0)
    return min(f(v) + 2 * m * delta * worst, 1.0)


@pytest.mark.parametrize("r", [10, 62, 100, 400])
def test_all_correct_without_delta_is_the_binomial_closed_form(r: int) -> None:
    # P[Binomial(r, q) >= r] = q^r = 0.05  =>  eps = ln(q / (1 - q))
    q = 0.05 ** (1 / r)
    assert epsilon_lower_bound(1000, r, r, 0.0) == pytest.approx(math.log(q / (1 - q)), abs=1e-6)


def test_62_right_guesses_are_what_refuting_epsilon_3_takes() -> None:
    """The audit's headline requirement in numbers: 61 all-correct guesses cannot refute 3."""
    assert epsilon_lower_bound(1000, 61, 61, 0.0) < 3 < epsilon_lower_bound(1000, 62, 62, 0.0)


@pytest.mark.parametrize(("r", "v"), [(50, 40), (200, 150), (400, 380)])
def test_bound_without_delta_sits_where_the_tail_is_alpha(r: int, v: int) -> None:
    eps = epsilon_lower_bound(1000, r, v, 0.0)
    assert eps > 0
    sigmoid = lambda e: math.exp(e) / (1 + math.exp(e))  # noqa: E731
    assert binomial_tail(r, v, sigmoid(eps)) == pytest.approx(0.05, rel=1e-6)
    assert binomial_tail(r, v, sigmoid(eps + 1e-3)) > 0.05  # a larger claim is not refuted


@pytest.mark.parametrize(
    ("m", "r", "v", "eps", "delta"),
    [(1000, 200, 180, 1.5, 1e-5), (200, 40, 40, 2.0, 1e-3), (500, 100, 70, 0.5, 1e-2)],
)
def test_p_value_matches_the_theorem_written_out(m, r, v, eps, delta) -> None:
    assert p_value(m, r, v, eps, delta) == pytest.approx(
        theorem_p_value(m, r, v, eps, delta), rel=1e-9
    )


def test_delta_term_only_lowers_the_bound() -> None:
    pure = epsilon_lower_bound(1000, 200, 190, 0.0)
    approx = epsilon_lower_bound(1000, 200, 190, 1e-5)
    loose = epsilon_lower_bound(1000, 200, 190, 1e-3)
    assert loose < approx < pure
    assert theorem_p_value(1000, 200, 190, approx, 1e-5) == pytest.approx(0.05, rel=1e-6)


def test_chance_guessing_refutes_nothing() -> None:
    assert epsilon_lower_bound(1000, 200, 100, 1e-5) == 0.0
    assert epsilon_lower_bound(1000, 200, 0, 1e-5) == 0.0
    assert p_value(1000, 200, 0, 3.0, 1e-5) == 1.0


def test_bound_grows_with_right_guesses_and_confidence_costs() -> None:
    bounds = [epsilon_lower_bound(1000, 200, v, 1e-5) for v in (150, 170, 190, 200)]
    assert bounds == sorted(bounds) and bounds[0] > 0
    assert epsilon_lower_bound(1000, 200, 190, 1e-5, confidence=0.99) < bounds[2]


@pytest.mark.parametrize(
    ("args", "match"),
    [((10, 5, 6, 0.0), "correct"), ((10, 11, 5, 0.0), "guesses"), ((10, 5, 5, 2.0), "delta")],
)
def test_impossible_counts_are_errors(args, match) -> None:
    with pytest.raises(PrivacyAuditError, match=match):
        epsilon_lower_bound(*args)


def test_guesses_take_the_top_and_bottom_scores() -> None:
    scores = np.array([5.0, -3.0, 0.1, 4.0, -2.0, 0.0])
    included = np.array([True, False, True, False, False, True])
    count = count_guesses(scores, included, k_plus=2, k_minus=2)
    # top two: indices 0 (in, right) and 3 (out, wrong); bottom two: 1 and 4 (both out, right)
    assert (count.guesses, count.correct) == (4, 3)


def test_ties_break_by_canary_index_not_by_membership() -> None:
    scores = np.zeros(4)  # all tied: the top guess is canary 0, the bottom one canary 3
    assert count_guesses(scores, np.array([True, False, False, False]), 1, 1).correct == 2
    assert count_guesses(scores, np.array([False, False, False, True]), 1, 1).correct == 0


def test_too_many_guesses_are_an_error() -> None:
    with pytest.raises(PrivacyAuditError, match="at most m"):
        count_guesses(np.zeros(3), np.zeros(3, dtype=bool), 2, 2)
