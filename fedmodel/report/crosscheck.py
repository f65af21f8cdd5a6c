"""Independent recomputation of every epsilon in the report.

A reviewer should not have to trust the number a site wrote down: the report rebuilds each
client's epsilon from the signed (noise, sampling rate, steps) history with Opacus's PRV
accountant and, separately, with Google's dp-accounting PLD accountant. Two independent
implementations agreeing within a few percent is evidence that neither the history nor the
accountant was misused; a larger gap is flagged in every rendering.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from fedmodel.privacy.accountant import pld_epsilon
from fedmodel.privacy.budget import cumulative_epsilon
from fedmodel.report.model import CrossCheck

DEFAULT_TOLERANCE = 0.02  # PRV and PLD are both near-tight; they differ by ~1 % on real histories


def relative_difference(a: float, b: float) -> float:
    """|a - b| relative to the larger of the two, so the measure is symmetric; 0 when both are 0."""
    scale = max(abs(a), abs(b))
    if scale == 0:
        return 0.0
    if math.isinf(scale):
        return 0.0 if a == b else math.inf
    return abs(a - b) / scale


def cross_check(
    history: Sequence[Sequence[float]],
    delta: float,
    *,
    epsilon_prv: float | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> CrossCheck:
    """Compare PRV's epsilon with PLD's on one history.

    ``epsilon_prv`` may be passed when the caller already computed it, because PRV is the slow
    half (a second or so per history) and the report needs the same number elsewhere.
    """
    prv = cumulative_epsilon(history, delta, "prv") if epsilon_prv is None else epsilon_prv
    pld = _pld(history, delta)
    diff = relative_difference(prv, pld)
    return CrossCheck(
        epsilon_prv=prv,
        epsilon_pld=pld,
        relative_difference=diff,
        tolerance=tolerance,
        within_tolerance=diff <= tolerance,
    )


def gaussian_rdp_epsilon(noise_multiplier: float, releases: int, delta: float) -> float:
    """Epsilon of ``releases`` Gaussian releases (no sampling) by dp-accounting's RDP accountant.

    The accountant Flower's ``RdpAccountant`` wraps, called directly and fed only the recorded
    settings: a server's central-DP figure is checked like for like (same method, so they agree
    to float noise), without trusting the server's own accounting code or its stored state.
    """
    from dp_accounting import GaussianDpEvent
    from dp_accounting.rdp import RdpAccountant

    accountant = RdpAccountant()
    accountant.compose(GaussianDpEvent(noise_multiplier), releases)
    return float(accountant.get_epsilon(delta))


def merge_repeats(history: Sequence[Sequence[float]]) -> list[list[float]]:
    """Consecutive entries of the same mechanism as one entry with their steps summed.

    k steps of one subsampled Gaussian are the same k-fold self-composition however they are
    chunked into rounds, so the epsilon is unchanged; PLD's cost grows with the number of
    compositions it convolves, so this makes the cross-check about three times faster.
    """
    merged: list[list[float]] = []
    for nm, sr, steps in history:
        if merged and merged[-1][0] == nm and merged[-1][1] == sr:
            merged[-1][2] += int(steps)
        else:
            merged.append([float(nm), float(sr), int(steps)])
    return merged


def _pld(history: Sequence[Sequence[float]], delta: float) -> float:
    """PLD epsilon, ``inf`` where its discretisation cannot bound the history (tiny noise), the
    same reading ``cumulative_epsilon`` gives PRV's failures."""
    try:
        return pld_epsilon(merge_repeats(history), delta)
    except (MemoryError, OverflowError, FloatingPointError, ValueError):
        return math.inf
