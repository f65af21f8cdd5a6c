"""Checks every update must pass before it may touch the global model.

A client is trusted with its own data, not with the shared model: an update with foreign
tensor names, wrong shapes or dtypes, NaN/Inf values, or an outsized norm is dropped with a
reason that goes into the run records, and the round goes on with the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord

from fedmodel.privacy.ledger_copy import MAX_SUFFIX_BYTES

AUTO_NORM_FACTOR = 10.0
AUTO_NORM_MIN_REPLIES = 3
# envelope header, ids, metrics record and the ledger entries (each bounded by the wire too)
ENVELOPE_SLACK = 128 * 1024 + MAX_SUFFIX_BYTES


@dataclass(frozen=True)
class UpdateCheck:
    """Why an update must be rejected (``None``: sound) and its L2 distance from the model."""

    problem: str | None
    norm: float


def update_check(update: ArrayRecord, reference: ArrayRecord) -> UpdateCheck:
    """Names, shapes, dtypes and finite values of ``update`` against the global ``reference``."""
    if set(update.keys()) != set(reference.keys()):
        missing = sorted(set(reference.keys()) - set(update.keys()))[:3]
        extra = sorted(set(update.keys()) - set(reference.keys()))[:3]
        return UpdateCheck(f"tensor names differ (missing {missing}, unexpected {extra})", 0.0)
    sq_norm = 0.0
    for name in reference:
        new, old = update[name].numpy(), reference[name].numpy()
        if new.shape != old.shape:
            return UpdateCheck(f"{name}: shape {new.shape} != {old.shape}", 0.0)
        if new.dtype != old.dtype:
            return UpdateCheck(f"{name}: dtype {new.dtype} != {old.dtype}", 0.0)
        if np.issubdtype(new.dtype, np.floating):
            if not np.all(np.isfinite(new)):
                return UpdateCheck(f"{name}: non-finite values", 0.0)
            sq_norm += float(np.sum((new.astype(np.float64) - old) ** 2))
    return UpdateCheck(None, sq_norm**0.5)


def update_problem(
    update: ArrayRecord, reference: ArrayRecord, max_update_norm: float | str | None
) -> str | None:
    """Why one update (or SecAgg+'s aggregate) must be rejected, with a fixed norm bound."""
    check = update_check(update, reference)
    if check.problem is not None:
        return check.problem
    bound = max_update_norm if isinstance(max_update_norm, float | int) else None
    if bound is not None and check.norm > bound:
        return f"update norm {check.norm:.4g} exceeds bound {bound:.4g}"
    return None


def norm_bound(setting: float | str | None, norms: list[float]) -> float | None:
    """The round's norm bound: a fixed number, or ``auto`` = 10x the median of the round's
    update norms once there are enough replies for a median to mean something.

    ``auto`` is a sanity bound against garbage or boosted updates (a node scaling its update by
    a thousand), not a robustness guarantee: the robust strategies are for that.
    """
    if setting is None or setting == "off":
        return None
    if isinstance(setting, float | int):
        return float(setting)
    if len(norms) < AUTO_NORM_MIN_REPLIES:
        return None
    return AUTO_NORM_FACTOR * float(np.median(norms))


def envelope_limit(reference: ArrayRecord) -> int:
    """The largest reply envelope the model can explain: its tensors, their safetensors header
    entries, and a bounded metrics record. Anything larger is refused before it is parsed."""
    tensors = sum(int(reference[name].numpy().nbytes) for name in reference)
    headers = sum(128 + len(name) for name in reference)
    return tensors + headers + ENVELOPE_SLACK
