"""``load_dataset``: one config in, train/test ``TensorDataset`` splits out, for every dataset.

Each dataset's loader only reads and anonymises its files; this module owns the shared path
(natural test set or held-out share, seeded limits, preprocessing fitted on training rows, per
site where there are sites) so every dataset follows the same rules.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch.utils.data import ConcatDataset, Dataset, Subset, TensorDataset

from fedmodel.config import DataConfig
from fedmodel.data.credit import load_adult_data, load_german_data
from fedmodel.data.errors import DataError
from fedmodel.data.heart import load_heart_data
from fedmodel.data.mnist import MNIST_CLASSES, load_mnist_arrays
from fedmodel.data.preprocess import ShiftAugmented, normalise_images, normalised_background
from fedmodel.data.rotten_tomatoes import RT_CLASSES, load_rotten_tomatoes
from fedmodel.data.site import encode_frame, impute_per_site
from fedmodel.data.small import load_breast_cancer_data, load_digits_data
from fedmodel.data.split import holdout_and_limit, limit_pair
from fedmodel.data.tables import LABEL, SITE, TabularData
from fedmodel.data.tokenize import tokenize_texts

Task = Literal["image", "tabular", "text"]


@dataclass(frozen=True)
class DatasetSplits:
    """A dataset ready for training: see the data contract in docs/architecture.md.

    ``train``/``test`` yield ``(*inputs, label)``. ``train_groups``/``test_groups`` give each
    row's site index (into ``group_names``) for datasets with natural sites, else ``None``.
    """

    name: str
    task: Task
    num_classes: int
    train: TensorDataset
    test: Dataset  # a declared task's oracle: the sites' held-out sets, concatenated
    train_groups: np.ndarray | None
    test_groups: np.ndarray | None
    group_names: list[str]
    input_shape: tuple[int, ...]
    class_names: list[str]


_TABULAR: Mapping[str, Callable[[], TabularData]] = MappingProxyType(
    {
        "heart": load_heart_data,
        "german-credit": load_german_data,
        "adult": load_adult_data,
        "digits": load_digits_data,
        "breast-cancer": load_breast_cancer_data,
    }
)
DATASETS: tuple[str, ...] = ("mnist", "rotten-tomatoes", *_TABULAR)


def check_dataset(name: str) -> str:
    """``name`` if it is a known dataset, else a ``DataError`` listing the known ones."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})")
    return name


def load_dataset(cfg: DataConfig) -> DatasetSplits:
    """Load, split, limit and preprocess ``cfg.dataset`` (offline, from carrier packages)."""
    name = check_dataset(cfg.dataset)
    if name == "mnist":
        return _image_splits(cfg)
    if name == "rotten-tomatoes":
        return _text_splits(cfg)
    return _tabular_splits(name, _TABULAR[name](), cfg)


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """Labels of a ``TensorDataset``, an image folder (its ``labels``), or a ``Subset`` or
    ``ConcatDataset`` of them, without iterating its rows.

    Reads the last tensor directly, so augmented datasets are not augmented just to count labels.
    """
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[np.asarray(dataset.indices)]
    if isinstance(dataset, ConcatDataset):
        parts = [dataset_labels(d) for d in dataset.datasets]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)
    labels = getattr(dataset, "labels", None)
    if isinstance(labels, np.ndarray):  # a lazy image folder: counted without decoding
        return labels.copy()
    tensors = getattr(dataset, "tensors", None)
    if tensors is None:
        raise TypeError(f"dataset_labels: {type(dataset).__name__} has no label tensor")
    return tensors[-1].numpy().copy()


def _labels(y: np.ndarray) -> torch.Tensor:
    """int64 label tensor owning its memory (pandas 3 hands out read-only arrays)."""
    return torch.tensor(np.asarray(y, dtype=np.int64))


def _image_splits(cfg: DataConfig) -> DatasetSplits:
    arrays = load_mnist_arrays()
    keep_train, keep_test = limit_pair(cfg, arrays.y_train, arrays.y_test)
    x_train = normalise_images(torch.from_numpy(arrays.x_train[keep_train]))
    x_test = normalise_images(torch.from_numpy(arrays.x_test[keep_test]))
    y_train, y_test = _labels(arrays.y_train[keep_train]), _labels(arrays.y_test[keep_test])
    if cfg.augment:
        fill = normalised_background()
        train: TensorDataset = ShiftAugmented(x_train, y_train, fill=fill, seed=cfg.seed)
    else:
        train = TensorDataset(x_train, y_train)
    return DatasetSplits(
        name="mnist",
        task="image",
        num_classes=len(MNIST_CLASSES),
        train=train,
        test=TensorDataset(x_test, y_test),
        train_groups=None,
        test_groups=None,
        group_names=[],
        input_shape=(1, 28, 28),
        class_names=list(MNIST_CLASSES),
    )


def _text_splits(cfg: DataConfig) -> DatasetSplits:
    texts, labels = load_rotten_tomatoes()
    train_rows, test_rows = holdout_and_limit(cfg, labels)
    # Tokenise only the rows kept: the full corpus would cost time for nothing on small slices.
    train = TensorDataset(
        *tokenize_texts(list(texts[train_rows]), cfg.max_length), _labels(labels[train_rows])
    )
    test = TensorDataset(
        *tokenize_texts(list(texts[test_rows]), cfg.max_length), _labels(labels[test_rows])
    )
    return DatasetSplits(
        name="rotten-tomatoes",
        task="text",
        num_classes=len(RT_CLASSES),
        train=train,
        test=test,
        train_groups=None,
        test_groups=None,
        group_names=[],
        input_shape=(cfg.max_length,),
        class_names=list(RT_CLASSES),
    )


def _groups(frame: pd.DataFrame, data: TabularData) -> np.ndarray | None:
    return frame[SITE].to_numpy(dtype=np.int64) if data.group_names else None


def _train_test_rows(data: TabularData, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``data.train`` and of the test table (``data.test``, or ``data.train`` again
    for a held-out share per site), after the seeded limits."""
    labels = data.train[LABEL].to_numpy()
    if data.test is None:
        return holdout_and_limit(cfg, labels, _groups(data.train, data))
    return limit_pair(
        cfg, labels, data.test[LABEL].to_numpy(), _groups(data.train, data),
        _groups(data.test, data),
    )  # fmt: skip


def _tabular_splits(name: str, data: TabularData, cfg: DataConfig) -> DatasetSplits:
    """Encoded by the dataset's declared task, through the encoder a site's own file goes
    through (``site.encode_frame``); only site-median columns are fitted, per site."""
    train_rows, test_rows = _train_test_rows(data, cfg)
    test_frame = data.train if data.test is None else data.test
    train, test = data.train.iloc[train_rows], test_frame.iloc[test_rows]
    x_all = encode_frame(data.task, data.train, data.source)
    x_train = x_all[train_rows]
    if data.test is None:
        x_test = x_all[test_rows]
    else:
        x_test = encode_frame(data.task, data.test, data.test_source or data.source)[test_rows]
    train_groups, test_groups = _groups(train, data), _groups(test, data)
    impute_per_site(data.task, x_train, x_test, train_groups, test_groups)
    y_train, y_test = _labels(train[LABEL].to_numpy()), _labels(test[LABEL].to_numpy())
    return DatasetSplits(
        name=name,
        task="tabular",
        num_classes=len(data.class_names),
        train=TensorDataset(torch.from_numpy(x_train), y_train),
        test=TensorDataset(torch.from_numpy(x_test), y_test),
        train_groups=train_groups,
        test_groups=test_groups,
        group_names=list(data.group_names),
        input_shape=(x_train.shape[1],),
        class_names=list(data.class_names),
    )
