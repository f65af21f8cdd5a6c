"""Checks every update must pass before it may touch the global model.

A client is trusted with its own data, not with the shared model: an update with foreign
tensor names, wrong shapes or dtypes, NaN/Inf values, or an outsized norm is dropped with a
reason that goes into the run records, and the round goes on with the rest.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord


def update_problem(
    update: ArrayRecord, reference: ArrayRecord, max_update_norm: float | None
) -> str | None:
    """Why ``update`` must be rejected against the global ``reference``, or ``None`` if sound."""
    if set(update.keys()) != set(reference.keys()):
        missing = sorted(set(reference.keys()) - set(update.keys()))[:3]
        extra = sorted(set(update.keys()) - set(reference.keys()))[:3]
        return f"tensor names differ (missing {missing}, unexpected {extra})"
    sq_norm = 0.0
    for name in reference:
        new, old = update[name].numpy(), reference[name].numpy()
        if new.shape != old.shape:
            return f"{name}: shape {new.shape} != {old.shape}"
        if new.dtype != old.dtype:
            return f"{name}: dtype {new.dtype} != {old.dtype}"
        if np.issubdtype(new.dtype, np.floating):
            if not np.all(np.isfinite(new)):
                return f"{name}: non-finite values"
            sq_norm += float(np.sum((new.astype(np.float64) - old) ** 2))
    if max_update_norm is not None and sq_norm**0.5 > max_update_norm:
        return f"update norm {sq_norm**0.5:.4g} exceeds bound {max_update_norm:.4g}"
    return None
