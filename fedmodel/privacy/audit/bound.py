"""The one-run audit's statistics: guesses from canary scores, and the epsilon they refute.

Steinke, Nasr & Jagielski (2023), "Privacy auditing with one (1) training run", arXiv 2305.08846.
Their Algorithm 1: each of ``m`` canaries is included independently with probability 1/2; after
one training run the auditor scores every canary, guesses "included" for the ``k_plus`` highest
scores and "excluded" for the ``k_minus`` lowest, and abstains on the rest. If training is
(epsilon, delta)-DP, the number ``W`` of correct guesses among the ``r = k_plus + k_minus`` made
satisfies, for every ``v`` (their main theorem, Theorem 3.1, which covers (epsilon, delta)-DP;
``p_value`` evaluates it as the paper's Appendix D code does)::

    P[W >= v] <= f(v) + 2 m delta * max_{i = 1..v} (f(v - i) - f(v)) / i,
    f(v) = P[Binomial(r, e^epsilon / (1 + e^epsilon)) >= v].

The right-hand side is the p-value of "this run is (epsilon, delta)-DP" given ``v`` correct
guesses; it grows with epsilon. The lower bound at confidence ``1 - alpha`` is the largest
epsilon whose p-value is still below ``alpha``: every smaller claim is refuted. With
``delta = 0`` this is the plain binomial tail (W is dominated by the binomial): ``r`` guesses
all correct give ``(e^eps / (1 + e^eps))^r = alpha``. The inequality is written out above so
that it can be checked against the paper line by line.

The guesses must not depend on which canaries were included except through the trained model,
and ``k_plus``/``k_minus`` must be fixed before the scores are seen: choosing them afterwards (or
taking the best of several) needs a correction this module does not make.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq
from scipy.special import expit
from scipy.stats import binom

from fedmodel.privacy.audit.errors import PrivacyAuditError

DEFAULT_CONFIDENCE = 0.95
EPSILON_XTOL = 1e-9


@dataclass(frozen=True)
class GuessCount:
    """What the auditor guessed: ``guesses`` made (r) and how many were ``correct`` (v)."""

    guesses: int
    correct: int


def check_counts(m: int, r: int, v: int, delta: float) -> None:
    """The theorem's domain: ``0 <= v <= r <= m`` and ``0 <= delta <= 1``."""
    if not 0 <= v <= r <= m:
        raise PrivacyAuditError(
            f"one-run audit needs 0 <= correct ({v}) <= guesses ({r}) <= canaries ({m})"
        )
    if not 0 <= delta <= 1:
        raise PrivacyAuditError(f"delta must be in [0, 1], got {delta}")


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Upper bound on ``P[W >= v]`` for an (epsilon, delta)-DP run (the theorem's right side)."""
    check_counts(m, r, v, delta)
    if epsilon < 0:
        raise PrivacyAuditError(f"epsilon must be >= 0, got {epsilon}")
    q = float(expit(epsilon))  # e^eps / (1 + e^eps): accuracy of eps-DP randomized response
    tail = float(binom.sf(v - 1, r, q))  # f(v) = P[Binomial(r, q) >= v]
    if delta == 0 or v == 0:
        return min(tail, 1.0)
    i = np.arange(1, v + 1)
    below = np.cumsum(binom.pmf(v - i, r, q))  # f(v - i) - f(v) = P[v - i <= Binomial < v]
    return min(tail + 2 * m * delta * float(np.max(below / i)), 1.0)


def epsilon_lower_bound(
    m: int, r: int, v: int, delta: float, confidence: float = DEFAULT_CONFIDENCE
) -> float:
    """Largest epsilon that ``v`` correct out of ``r`` guesses refute at ``confidence``; 0 if none.

    The p-value is continuous and non-decreasing in epsilon (``f`` grows with the binomial's
    success probability), so the bound is the root of ``p_value(eps) = alpha``, bracketed by
    doubling and found by Brent's method.
    """
    if not 0 < confidence < 1:
        raise PrivacyAuditError(f"confidence must be in (0, 1), got {confidence}")
    alpha = 1.0 - confidence
    check_counts(m, r, v, delta)
    if p_value(m, r, v, 0.0, delta) >= alpha:
        return 0.0
    lo, hi = 0.0, 1.0
    while p_value(m, r, v, hi, delta) < alpha:
        lo, hi = hi, 2 * hi
        if hi > 1e4:  # p-value -> P[Binomial(r, 1) >= v] = 1 as epsilon grows: unreachable
            raise PrivacyAuditError("one-run audit: no epsilon bound found below 1e4")
    root = brentq(lambda eps: p_value(m, r, v, eps, delta) - alpha, lo, hi, xtol=EPSILON_XTOL)
    return float(root)


def count_guesses(
    scores: np.ndarray, included: np.ndarray, k_plus: int, k_minus: int
) -> GuessCount:
    """Guess "in" for the ``k_plus`` highest scores and "out" for the ``k_minus`` lowest.

    Ties are broken by canary index (a stable sort), which is independent of which canaries
    were included, so the guesses stay a function of the scores alone.
    """
    scores, included = np.asarray(scores, dtype=float), np.asarray(included, dtype=bool)
    m = scores.shape[0]
    if included.shape != (m,):
        raise PrivacyAuditError(f"{included.shape[0]} inclusion flags for {m} canary scores")
    if k_plus < 0 or k_minus < 0 or k_plus + k_minus > m:
        raise PrivacyAuditError(
            f"k+ ({k_plus}) and k- ({k_minus}) must be >= 0 and together at most m ({m})"
        )
    if np.isnan(scores).any():
        raise PrivacyAuditError("canary scores contain NaN (training diverged?)")
    order = np.argsort(-scores, kind="stable")
    top, bottom = order[:k_plus], order[m - k_minus :]
    correct = int(included[top].sum()) + int((~included[bottom]).sum())
    return GuessCount(guesses=k_plus + k_minus, correct=correct)
