"""The data owner's privacy budget: refuse a round *before* training if it would pass the cap.

The cap ``(epsilon, delta)`` comes from the node's own configuration, never from the server: the
server is the party the budget protects against. The check projects the cumulative epsilon over
the node's whole ledger history plus the planned round and allows the round only when that
projection stays at or under the cap, so the last allowed round is exactly the boundary round.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from fedmodel.errors import FedmodelError
from fedmodel.privacy.accountant import (
    AccountantName,
    AccountingError,
    HistoryEntry,
    bounded_epsilon,
    normalise_history,
)


class BudgetError(FedmodelError):
    """The planned round or the cap cannot be evaluated (malformed input, unknown accountant)."""


class Cap(Protocol):
    """What a cap must offer; :class:`fedmodel.config.PrivacyBudget` is the usual one."""

    epsilon: float
    delta: float


@dataclass(frozen=True)
class BudgetDecision:
    """The verdict for one planned round.

    ``remaining`` is the budget left *before* the round (cap minus spent; negative when a cap was
    lowered below what is already spent). ``projected_epsilon`` is ``inf`` when the accountant
    cannot bound the round at all (noise far too small), which always refuses.
    """

    allowed: bool
    projected_epsilon: float
    cap_epsilon: float
    spent_epsilon: float
    remaining: float
    reason: str


def cumulative_epsilon(
    history: Iterable[Sequence[float]], delta: float, accountant: AccountantName = "prv"
) -> float:
    """Epsilon over ``history`` at ``delta``; ``inf`` (no bound) where the numerics blow up."""
    return bounded_epsilon(history, delta, accountant)


def check_round(
    history: Iterable[Sequence[float]],
    planned: Sequence[float],
    cap: Cap,
    accountant: AccountantName = "prv",
    *,
    delta: float | None = None,
) -> BudgetDecision:
    """Decide whether the planned ``(noise_multiplier, sample_rate, steps)`` round may run.

    Epsilon is evaluated at the cap's delta, because that is the guarantee the owner set. A run
    whose own delta (``delta``) is larger than the cap's is refused outright: it would report a
    weaker guarantee than the owner allows, whatever the epsilon.
    """
    return check_spend(history, [planned], cap, accountant, delta=delta)


def check_spend(
    history: Iterable[Sequence[float]],
    planned: Iterable[Sequence[float]],
    cap: Cap,
    accountant: AccountantName = "prv",
    *,
    delta: float | None = None,
) -> BudgetDecision:
    """:func:`check_round` for a spend that adds several history entries at once (a DP-SGD
    round and the Gaussian release of its noised metrics, say)."""
    past, planned_entries = _validated(history, planned, cap, accountant)
    spent = cumulative_epsilon(past, cap.delta, accountant)
    projected = cumulative_epsilon([*past, *planned_entries], cap.delta, accountant)
    allowed, reason = _verdict(projected, spent, cap, delta)
    return BudgetDecision(
        allowed=allowed,
        projected_epsilon=projected,
        cap_epsilon=cap.epsilon,
        spent_epsilon=spent,
        remaining=cap.epsilon - spent,
        reason=reason,
    )


def _validated(
    history: Iterable[Sequence[float]],
    planned: Iterable[Sequence[float]],
    cap: Cap,
    accountant: str,
) -> tuple[list[HistoryEntry], list[HistoryEntry]]:
    if accountant not in ("prv", "rdp"):
        raise BudgetError(f"accountant {accountant!r}: use prv or rdp")
    if not (cap.epsilon > 0 and 0 < cap.delta < 1):
        raise BudgetError(
            f"budget cap ({cap.epsilon}, {cap.delta}): need epsilon > 0, 0 < delta < 1"
        )
    try:
        past = normalise_history(history)
        planned_list = [tuple(p) for p in planned]
        planned_entries = normalise_history(planned_list)
    except (AccountingError, TypeError, ValueError) as err:
        raise BudgetError(f"planned round {planned!r}: {err}") from None
    return past, planned_entries


def _verdict(projected: float, spent: float, cap: Cap, delta: float | None) -> tuple[bool, str]:
    if delta is not None and delta > cap.delta:
        return False, f"run delta {delta:g} exceeds the node's cap delta {cap.delta:g}"
    if math.isinf(projected):
        return False, "the accountant cannot bound epsilon for this round (noise too small)"
    if projected > cap.epsilon:
        return False, (
            f"projected epsilon {projected:.4f} would exceed the node's cap {cap.epsilon:g} "
            f"(spent {spent:.4f})"
        )
    return True, f"projected epsilon {projected:.4f} within the node's cap {cap.epsilon:g}"


def default_delta_limit(num_examples: int) -> float:
    """``1 / (10 n)``: the largest delta a site allows for ``n`` rows unless its policy says
    otherwise. Delta is the probability the guarantee fails outright; with ``n`` rows, delta near
    ``1/n`` permits a mechanism that publishes one row in the clear, so ``delta * n`` is kept
    well below one. Used by the node (``clients/policy.py``) and by the report alike."""
    return 1.0 / (10 * max(1, num_examples))
