"""Gaussian releases of a site's counts and sums: the only other way a value may leave a site.

Besides its DP-SGD update, a site may release a few statistics of its rows (its training loss,
accuracy and example count; evaluation counts) if its policy opts in. Each release is the
Gaussian mechanism on a vector of sums whose per-example contributions are bounded, so its
cost is one accountant entry ``(noise_multiplier, 1.0, 1)``: Opacus' accountants treat a
Poisson-subsampled Gaussian with sample rate 1 and one step as exactly that mechanism. The entry
goes through the one spend door with the round it belongs to (:mod:`fedmodel.privacy.spend`).

Sensitivity, under adding or removing one example: every coordinate ``value / bound`` changes by
at most 1, so the vector of ``k`` such coordinates has L2 sensitivity ``sqrt(k)``; noise of
standard deviation ``noise_multiplier * sqrt(k)`` on each coordinate is the Gaussian mechanism
with that noise multiplier. The noise is drawn from the operating system's CSPRNG: a seeded
generator whose seed an observer could learn would let it subtract the noise.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedmodel.errors import FedmodelError
from fedmodel.privacy.accountant import HistoryEntry


class ReleaseError(FedmodelError):
    """A release whose bounds or noise cannot give a guarantee."""


@dataclass(frozen=True)
class SiteStats:
    """Sums over a site's rows, each with its per-example bound (the sensitivity per coordinate)."""

    count: float
    correct: float
    loss_sum: float
    loss_bound: float

    def values(self) -> dict[str, float]:
        return {"count": self.count, "correct": self.correct, "loss_sum": self.loss_sum}

    def bounds(self) -> dict[str, float]:
        return {"count": 1.0, "correct": 1.0, "loss_sum": self.loss_bound}


def history_entry(noise_multiplier: float) -> HistoryEntry:
    """What one release adds to the accountant's history."""
    if not noise_multiplier > 0:
        raise ReleaseError(f"release noise multiplier {noise_multiplier} must be > 0")
    return (float(noise_multiplier), 1.0, 1)


def site_stats(labels: np.ndarray, probs: np.ndarray, loss_bound: float) -> SiteStats:
    """Count, correct predictions and the clipped cross-entropy sum of a labelled prediction."""
    if not loss_bound > 0:
        raise ReleaseError(f"loss bound {loss_bound} must be > 0")
    if len(labels) == 0:
        return SiteStats(0.0, 0.0, 0.0, loss_bound)
    # A crafted model can overflow on chosen rows; NaN survives any noise, so a row whose
    # prediction is not finite counts as wrong, at the loss bound, like any bad prediction.
    finite = np.all(np.isfinite(probs), axis=1)
    safe = np.where(finite[:, None], probs, 0.0)
    picked = safe[np.arange(len(labels)), labels]
    losses = np.clip(-np.log(np.clip(picked, 1e-12, 1.0)), 0.0, loss_bound)
    losses = np.where(finite, losses, loss_bound)
    correct = float(np.sum(finite & (np.argmax(safe, axis=1) == labels)))
    return SiteStats(float(len(labels)), correct, float(np.sum(losses)), loss_bound)


def release(
    values: Mapping[str, float], bounds: Mapping[str, float], noise_multiplier: float
) -> dict[str, float]:
    """The Gaussian mechanism on ``values``; ``bounds[k]`` is one example's largest effect on k."""
    if set(values) != set(bounds) or not values:
        raise ReleaseError("every released value needs its bound, and something to release")
    if any(not b > 0 for b in bounds.values()):
        raise ReleaseError("release bounds must be > 0")
    history_entry(noise_multiplier)
    std = noise_multiplier * math.sqrt(len(values))
    rng = np.random.default_rng(secrets.randbits(128))
    return {key: float(values[key] + bounds[key] * rng.normal(0.0, std)) for key in sorted(values)}


def noised_summary(stats: SiteStats, noise_multiplier: float) -> dict[str, float]:
    """Released count, accuracy and mean loss from noised sums (post-processing, no extra cost)."""
    noised = release(stats.values(), stats.bounds(), noise_multiplier)
    count = max(1.0, noised["count"])
    return {
        "count": float(round(max(0.0, noised["count"]))),
        "accuracy": float(min(1.0, max(0.0, noised["correct"] / count))),
        "loss": float(min(stats.loss_bound, max(0.0, noised["loss_sum"] / count))),
    }
