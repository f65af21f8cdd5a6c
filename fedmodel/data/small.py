"""scikit-learn's bundled tables: zero-install fallbacks and fast test fixtures.

``load_digits`` (1,797 8x8 digits) is kept as 64 tabular pixel features rather than upsampled to
MNIST's shape: it then exercises the tabular path with a 10-class label. ``load_breast_cancer``
is 569 x 30, label 0 malignant / 1 benign (scikit-learn's encoding). Only ``load_*`` functions
are used: every sklearn ``fetch_*`` downloads.
"""

from __future__ import annotations

import pandas as pd
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.utils import Bunch

from fedmodel.data.anonymise import anonymise
from fedmodel.data.preprocess import TabularSpec
from fedmodel.data.tables import LABEL, TabularData


def _sklearn_table(dataset: str, bunch: Bunch, feature_names: list[str]) -> TabularData:
    """All features numeric, no natural test set: the registry holds out a stratified share."""
    frame = pd.DataFrame(bunch.data, columns=feature_names)
    frame[LABEL] = bunch.target.astype("int64")
    spec = TabularSpec(name=dataset, numeric=tuple(feature_names))
    classes = tuple(str(c) for c in bunch.target_names)
    return TabularData(spec, anonymise(frame, dataset), None, classes)


def load_digits_data() -> TabularData:
    """1,797 digits as 64 pixel features (0-16), 10 classes."""
    return _sklearn_table("digits", load_digits(), [f"pixel_{i}" for i in range(64)])


def load_breast_cancer_data() -> TabularData:
    """569 tumours x 30 features; label 0 = malignant, 1 = benign."""
    bunch = load_breast_cancer()
    return _sklearn_table("breast-cancer", bunch, [str(n) for n in bunch.feature_names])
