"""Seeded train/test splits and row limits.

Natural test sets are kept (MNIST test images, the Adult test file) so results stay comparable
with published numbers. Datasets without one get a stratified held-out share, split *within each
site* for heart so every hospital keeps its own test rows and its own label balance.
``train_limit``/``test_limit`` take seeded stratified slices, so a small CI slice keeps the class
(and site) proportions of the full data. Each use draws from its own seeded stream, so changing
one limit never reshuffles the other split.
"""

from __future__ import annotations

import numpy as np

from fedmodel.config import DataConfig

_HOLDOUT_STREAM = 1
_TRAIN_LIMIT_STREAM = 2
_TEST_LIMIT_STREAM = 3


def allocate(counts: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """Split ``total`` across strata in proportion to ``counts`` (largest remainder method).

    Ties between equal remainders are broken by ``rng``, so no stratum is favoured by its order.
    """
    quotas = counts * total / counts.sum()
    base = np.floor(quotas).astype(np.int64)
    order = np.lexsort((rng.random(len(counts)), -(quotas - base)))
    base[order[: total - int(base.sum())]] += 1
    return base


def stratified_sample(strata: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``size`` rows drawn so each stratum keeps its share."""
    if size >= len(strata):
        return np.arange(len(strata))
    _, inverse, counts = np.unique(strata, return_inverse=True, return_counts=True)
    take = allocate(counts, size, rng)
    chosen = [
        rng.choice(np.flatnonzero(inverse == k), size=int(n), replace=False)
        for k, n in enumerate(take)
    ]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def combined_strata(labels: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """One stratum per (group, label) pair, or per label when there are no groups."""
    labels = np.asarray(labels, dtype=np.int64)
    if groups is None:
        return labels
    return np.asarray(groups, dtype=np.int64) * (int(labels.max(initial=0)) + 1) + labels


def holdout_split(
    labels: np.ndarray, test_fraction: float, seed: int, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row indices: a label-stratified ``test_fraction`` held out per group."""
    labels = np.asarray(labels)
    if groups is None:  # one group, 0: no row-index copy of a million-row site's labels
        rng = np.random.default_rng([seed, _HOLDOUT_STREAM, 0])
        test = stratified_sample(labels, round(test_fraction * len(labels)), rng)
    else:
        groups = np.asarray(groups)
        picked = [np.zeros(0, np.int64)]
        for group in np.unique(groups).tolist():
            rows = np.flatnonzero(groups == group)
            rng = np.random.default_rng([seed, _HOLDOUT_STREAM, group])
            picked.append(
                rows[stratified_sample(labels[rows], round(test_fraction * len(rows)), rng)]
            )
        test = np.sort(np.concatenate(picked))
    held = np.zeros(len(labels), dtype=bool)
    held[test] = True  # every row is in one group: training is every row not held out
    return np.flatnonzero(~held), test.astype(np.int64, copy=False)


def limit_rows(
    labels: np.ndarray, limit: int | None, seed: int, stream: int, groups: np.ndarray | None = None
) -> np.ndarray:
    """Indices of a seeded stratified slice of at most ``limit`` rows (all rows if no limit)."""
    strata = combined_strata(labels, groups)
    if limit is None or limit >= len(strata):
        return np.arange(len(strata))
    return stratified_sample(strata, limit, np.random.default_rng([seed, stream]))


def limit_pair(
    cfg: DataConfig,
    train_labels: np.ndarray,
    test_labels: np.ndarray,
    train_groups: np.ndarray | None = None,
    test_groups: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``cfg.train_limit`` and ``cfg.test_limit``: indices into each split."""
    train = limit_rows(train_labels, cfg.train_limit, cfg.seed, _TRAIN_LIMIT_STREAM, train_groups)
    test = limit_rows(test_labels, cfg.test_limit, cfg.seed, _TEST_LIMIT_STREAM, test_groups)
    return train, test


def holdout_and_limit(
    cfg: DataConfig, labels: np.ndarray, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of (train, test) for a dataset with no natural test set, limits applied."""
    labels = np.asarray(labels)
    train, test = holdout_split(labels, cfg.test_fraction, cfg.seed, groups)
    sub = (None, None) if groups is None else (groups[train], groups[test])
    keep_train, keep_test = limit_pair(cfg, labels[train], labels[test], *sub)
    return train[keep_train], test[keep_test]
