"""scikit-learn's bundled tables: zero-install fallbacks and fast test fixtures.

``load_digits`` (1,797 8x8 digits) is kept as 64 tabular pixel features rather than upsampled to
MNIST's shape: it then exercises the tabular path with a 10-class label. ``load_breast_cancer``
is 569 x 30, label 0 malignant / 1 benign (scikit-learn's encoding). Only ``load_*`` functions
are used: every sklearn ``fetch_*`` downloads.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.utils import Bunch

from fedmodel.data.anonymise import anonymise
from fedmodel.data.errors import DataError
from fedmodel.data.tables import LABEL, TabularData, packaged_task


def _sklearn_table(
    dataset: str, bunch: Bunch, ranges: dict[str, tuple[float, float]], *, clip: bool = False
) -> TabularData:
    """All features numeric with declared ranges, none missing, no natural test set: the
    registry holds out a stratified share. ``clip``: the documented range is rounded."""
    frame = pd.DataFrame(bunch.data, columns=list(ranges))
    frame[LABEL] = bunch.target.astype("int64")
    classes = tuple(str(c) for c in bunch.target_names)
    rule = {"out_of_range": "clip"} if clip else {}
    numeric = {c: {"min": lo, "max": hi, **rule} for c, (lo, hi) in ranges.items()}
    task = packaged_task(dataset, classes, numeric, may_be_missing=())
    source = Path(f"sklearn.datasets.load_{dataset.replace('-', '_')}")
    return TabularData(task, anonymise(frame, dataset), None, classes, source=source)


def load_digits_data() -> TabularData:
    """1,797 digits as 64 pixel features (0-16), 10 classes."""
    return _sklearn_table("digits", load_digits(), {f"pixel_{i}": (0, 16) for i in range(64)})


def load_breast_cancer_data() -> TabularData:
    """569 tumours x 30 features; label 0 = malignant, 1 = benign."""
    bunch = load_breast_cancer()
    return _sklearn_table("breast-cancer", bunch, documented_ranges(bunch), clip=True)


def documented_ranges(bunch: Bunch) -> dict[str, tuple[float, float]]:
    """Each feature's range from the dataset's own documentation (the "Summary Statistics"
    table of its DESCR, rounded to three decimals there: hence ``clip``)."""
    table = {}
    for line in bunch.DESCR.splitlines():
        name, _, numbers = line.partition(":")
        parts = numbers.split()
        if len(parts) == 2 and name.strip():
            try:
                table[name.strip()] = (float(parts[0]), float(parts[1]))
            except ValueError:
                continue
    ranges = {}
    for feature in (str(n) for n in bunch.feature_names):
        documented = _documented_name(feature)
        if documented not in table:
            raise DataError(f"breast-cancer: no documented range for feature {feature!r}")
        ranges[feature] = table[documented]
    return ranges


def _documented_name(feature: str) -> str:
    """scikit-learn's feature name as its DESCR table writes it: 'mean radius' ->
    'radius (mean)', 'radius error' -> 'radius (standard error)', 'worst radius' ->
    'radius (worst)'."""
    if feature.startswith("mean "):
        return f"{feature[5:]} (mean)"
    if feature.startswith("worst "):
        return f"{feature[6:]} (worst)"
    if feature.endswith(" error"):
        return f"{feature[:-6]} (standard error)"
    return feature
