"""Split training rows among federation members: iid, Dirichlet label skew, or natural sites.

Every scheme returns disjoint index arrays that together cover all rows exactly once, and no
partition is empty (an empty client cannot train and would stall a round). ``label_skew``
measures how far the partitions' label distributions drift from the global one, so tests and
``fedmodel data stats`` can show that a smaller Dirichlet alpha really means more skew.
"""

from __future__ import annotations

import numpy as np

from fedmodel.config import PartitionConfig
from fedmodel.data.errors import DataError

_MAX_DIRICHLET_DRAWS = 100


def partition_indices(
    labels: np.ndarray, cfg: PartitionConfig, groups: np.ndarray | None = None
) -> list[np.ndarray]:
    """Sorted row indices of each of ``cfg.num_partitions`` partitions of ``labels``."""
    labels = np.asarray(labels)
    if groups is not None and len(groups) != len(labels):
        raise DataError(f"partition: {len(groups)} site labels for {len(labels)} rows")
    if cfg.num_partitions > len(labels):
        raise DataError(
            f"partition.num_partitions={cfg.num_partitions} exceeds the {len(labels)} rows"
        )
    rng = np.random.default_rng(cfg.seed)
    if cfg.scheme == "iid":
        return _iid(len(labels), cfg.num_partitions, rng)
    if cfg.scheme == "dirichlet":
        return _dirichlet(labels, cfg.num_partitions, cfg.alpha, rng)
    if cfg.scheme == "natural":
        return _natural(groups, cfg.num_partitions)
    raise DataError(f"partition.scheme: unknown scheme {cfg.scheme!r}")


def _iid(n: int, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Seeded shuffle cut into ``k`` near-equal parts (sizes differ by at most one)."""
    return [np.sort(part) for part in np.array_split(rng.permutation(n), k)]


def _dirichlet(
    labels: np.ndarray, k: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Per class, shares drawn from Dirichlet(alpha); redraw (then repair) until none is empty."""
    parts = _dirichlet_draw(labels, k, alpha, rng)
    for _ in range(_MAX_DIRICHLET_DRAWS - 1):
        if min(len(p) for p in parts) > 0:
            return parts
        parts = _dirichlet_draw(labels, k, alpha, rng)
    return _fill_empty(parts, rng)


def _dirichlet_draw(
    labels: np.ndarray, k: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    buckets: list[list[np.ndarray]] = [[] for _ in range(k)]
    for cls in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == cls))
        shares = rng.dirichlet(np.full(k, alpha))
        cuts = np.round(np.cumsum(shares)[:-1] * len(rows)).astype(np.int64)
        for bucket, chunk in zip(buckets, np.split(rows, cuts), strict=True):
            bucket.append(chunk)
    return [np.sort(np.concatenate(b)).astype(np.int64) for b in buckets]


def _fill_empty(parts: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Move single random rows from the largest partition into each empty one."""
    parts = [p.copy() for p in parts]
    for i in range(len(parts)):
        if len(parts[i]) == 0:
            donor = int(np.argmax([len(p) for p in parts]))
            pick = int(rng.integers(len(parts[donor])))
            parts[i] = parts[donor][pick : pick + 1]
            parts[donor] = np.delete(parts[donor], pick)
    return parts


def _natural(groups: np.ndarray | None, k: int) -> list[np.ndarray]:
    """One partition per site, in site-index order."""
    if groups is None:
        raise DataError("partition.scheme='natural' needs a dataset with natural sites (heart)")
    sites = np.unique(groups)
    if k != len(sites):
        raise DataError(f"partition.num_partitions={k} but scheme 'natural' has {len(sites)} sites")
    return [np.flatnonzero(groups == site) for site in sites]


def label_histograms(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """(partitions, classes) matrix of label counts."""
    labels = np.asarray(labels, dtype=np.int64)
    return np.stack([np.bincount(labels[p], minlength=num_classes) for p in parts])


def label_skew(
    labels: np.ndarray, parts: list[np.ndarray], num_classes: int | None = None
) -> float:
    """Mean total-variation distance between each partition's and the global label distribution.

    0 means every partition has the global class balance; 1 would mean disjoint supports.
    """
    labels = np.asarray(labels, dtype=np.int64)
    k = int(labels.max(initial=0)) + 1 if num_classes is None else num_classes
    counts = label_histograms(labels, [p for p in parts if len(p)], k).astype(float)
    if counts.size == 0:
        return 0.0
    overall = np.bincount(labels, minlength=k) / len(labels)
    shares = counts / counts.sum(axis=1, keepdims=True)
    return float(np.mean(0.5 * np.abs(shares - overall).sum(axis=1)))
