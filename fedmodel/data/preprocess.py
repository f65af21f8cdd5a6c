"""Preprocessing: fixed image normalisation, on-the-fly shifts, and a train-only tabular pipeline.

Everything that *learns* a statistic (medians, modes, means, standard deviations) is fitted on
training rows only and then applied unchanged to test rows: statistics taken from test rows would
leak them into the model. For datasets with natural sites (heart) one preprocessor is fitted per
site on that site's training rows, because pooling statistics across hospitals would leak data
between federation members. Category lists are declared per dataset, never learned, so every
site produces the same feature layout and the federated model's input width is fixed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch.utils.data import TensorDataset

from fedmodel.data.errors import DataError

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
"""Published MNIST training-set pixel statistics: fixed constants, so nothing is fitted."""


def normalise_images(images: torch.Tensor) -> torch.Tensor:
    """Map [0, 1] pixels to zero mean / unit variance with the fixed MNIST constants."""
    return (images - MNIST_MEAN) / MNIST_STD


def normalised_background() -> float:
    """The value a black (0) pixel takes after :func:`normalise_images`: fill for shifts."""
    return (0.0 - MNIST_MEAN) / MNIST_STD


def _shift_span(shift: int, size: int) -> tuple[slice, slice]:
    """(destination, source) slices that move a 1-D axis of ``size`` by ``shift`` pixels."""
    if shift >= 0:
        return slice(shift, size), slice(0, size - shift)
    return slice(0, size + shift), slice(-shift, size)


def shift_image(image: torch.Tensor, dy: int, dx: int, fill: float) -> torch.Tensor:
    """Translate a (C, H, W) image by (dy, dx) pixels; uncovered pixels take ``fill``."""
    _, height, width = image.shape
    out = torch.full_like(image, fill)
    dst_y, src_y = _shift_span(dy, height)
    dst_x, src_x = _shift_span(dx, width)
    out[:, dst_y, dst_x] = image[:, src_y, src_x]
    return out


class ShiftAugmented(TensorDataset):
    """Training images randomly shifted by up to ``max_shift`` pixels on every access.

    A ``TensorDataset`` subclass so it keeps the ``(x, y)`` contract and the ``.tensors``
    attribute (labels stay readable without augmenting). The shifts come from a private seeded
    generator: runs are reproducible for a given access order, and no global RNG is touched.
    Only ever wrap training rows; test rows must be scored unaltered.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        max_shift: int = 2,
        fill: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__(images, labels)
        self.max_shift = max_shift
        self.fill = fill
        self._generator = torch.Generator().manual_seed(seed)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = super().__getitem__(index)
        dy, dx = torch.randint(
            -self.max_shift, self.max_shift + 1, (2,), generator=self._generator
        ).tolist()
        return shift_image(image, dy, dx, self.fill), label


@dataclass(frozen=True)
class TabularSpec:
    """Declared feature layout of a tabular dataset.

    ``categorical`` maps each column to its full, fixed category list (one-hot order).
    ``placeholder_zero`` columns use 0 for "not measured" (heart ``chol``) and are treated as
    missing. ``missing_flags`` columns get a 0/1 "was missing" feature, so imputation does not
    hide that a value was absent.
    """

    name: str
    numeric: tuple[str, ...]
    categorical: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    placeholder_zero: tuple[str, ...] = ()
    missing_flags: tuple[str, ...] = ()

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.numeric, *self.categorical)

    @property
    def feature_names(self) -> list[str]:
        """Names of the output columns of :meth:`TabularPreprocessor.transform`, in order."""
        flags = [f"{c}_missing" for c in self.missing_flags]
        onehot = [f"{c}={v}" for c, values in self.categorical.items() for v in values]
        return [*self.numeric, *flags, *onehot]


class TabularPreprocessor:
    """Impute, flag, scale and one-hot a table, with statistics fitted on training rows only.

    Numeric columns: placeholder zeros become missing, missing values take the training median
    (0 if a site never measured the column), then standard scaling with the training mean and
    standard deviation (1 where constant). Categorical columns: missing values take the training
    mode (all-zero one-hot if never observed); values outside the declared list are a
    ``DataError``, since they mean the file is not what the spec describes.
    """

    def __init__(self, spec: TabularSpec) -> None:
        self.spec = spec
        self.medians_: dict[str, float] = {}
        self.means_: dict[str, float] = {}
        self.stds_: dict[str, float] = {}
        self.modes_: dict[str, str | None] = {}
        self.n_fit_rows_: int = 0

    def fit(self, frame: pd.DataFrame) -> TabularPreprocessor:
        if len(frame) == 0:
            raise DataError(f"{self.spec.name}: cannot fit preprocessing on zero training rows")
        numeric = self._numeric(frame)
        medians = numeric.median()
        self.medians_ = {c: float(medians[c]) if pd.notna(medians[c]) else 0.0 for c in numeric}
        imputed = numeric.fillna(self.medians_)
        stds = imputed.std(ddof=0)
        self.means_ = {c: float(imputed[c].mean()) for c in imputed}
        self.stds_ = {c: float(stds[c]) if stds[c] > 0 else 1.0 for c in imputed}
        self.modes_ = {c: self._mode(frame, c) for c in self.spec.categorical}
        self.n_fit_rows_ = len(frame)
        return self

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Feature matrix (rows, ``len(spec.feature_names)``), float32."""
        if not self.n_fit_rows_:
            raise RuntimeError("TabularPreprocessor.transform called before fit")
        numeric = self._numeric(frame)
        blocks = [self._scaled(numeric), self._flags(numeric, frame), *self._onehots(frame)]
        return np.concatenate(blocks, axis=1).astype(np.float32)

    def _numeric(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Numeric columns as float, placeholder zeros as NaN; non-numbers are a DataError."""
        out = pd.DataFrame(index=frame.index)
        for column in self.spec.numeric:
            values = pd.to_numeric(frame[column], errors="coerce").astype(float)
            if (values.isna() & frame[column].notna()).any():
                bad = frame[column][values.isna() & frame[column].notna()].iloc[0]
                raise DataError(
                    f"{self.spec.name}: column {column!r} has non-numeric value {bad!r}"
                )
            if column in self.spec.placeholder_zero:
                values = values.mask(values == 0)
            out[column] = values
        return out

    def _categories(self, frame: pd.DataFrame, column: str) -> pd.Series:
        """A categorical column as strings (NaN kept); undeclared values are a DataError."""
        values = frame[column].map(lambda v: v if pd.isna(v) else str(v))
        declared = set(self.spec.categorical[column])
        unknown = sorted({v for v in values.dropna() if v not in declared})
        if unknown:
            raise DataError(
                f"{self.spec.name}: column {column!r} has undeclared category {unknown[0]!r}"
            )
        return values

    def _mode(self, frame: pd.DataFrame, column: str) -> str | None:
        """Most frequent training value; ties go to the first in declared order."""
        values = self._categories(frame, column)
        counts = [int((values == v).sum()) for v in self.spec.categorical[column]]
        if max(counts) == 0:
            return None
        return self.spec.categorical[column][int(np.argmax(counts))]

    def _scaled(self, numeric: pd.DataFrame) -> np.ndarray:
        imputed = numeric.fillna(self.medians_)
        cols = list(self.spec.numeric)
        means = np.array([self.means_[c] for c in cols])
        stds = np.array([self.stds_[c] for c in cols])
        return (imputed[cols].to_numpy(dtype=float) - means) / stds

    def _flags(self, numeric: pd.DataFrame, frame: pd.DataFrame) -> np.ndarray:
        """1.0 where a flagged column was missing (after placeholder zeros became missing)."""
        flags = [
            (numeric[c] if c in numeric else frame[c]).isna().to_numpy(dtype=float)
            for c in self.spec.missing_flags
        ]
        return np.stack(flags, axis=1) if flags else np.zeros((len(frame), 0))

    def _onehots(self, frame: pd.DataFrame) -> list[np.ndarray]:
        blocks = []
        for column, declared in self.spec.categorical.items():
            values = self._categories(frame, column)
            if self.modes_[column] is not None:
                values = values.fillna(self.modes_[column])
            blocks.append(np.stack([(values == v).to_numpy(dtype=float) for v in declared], 1))
        return blocks


@dataclass(frozen=True)
class TabularFeatures:
    """Transformed train/test matrices and the preprocessor fitted for each group index."""

    x_train: np.ndarray
    x_test: np.ndarray
    preprocessors: dict[int, TabularPreprocessor]


def preprocess_tabular(
    spec: TabularSpec,
    train: pd.DataFrame,
    test: pd.DataFrame,
    train_groups: np.ndarray | None = None,
    test_groups: np.ndarray | None = None,
) -> TabularFeatures:
    """Fit one preprocessor per group on that group's training rows; transform its test rows.

    Without groups the whole table is one group. A group with test rows but no training rows is
    a ``DataError``: borrowing another site's statistics is exactly the leak this avoids.
    """
    if train_groups is None or test_groups is None:
        train_groups = np.zeros(len(train), dtype=np.int64)
        test_groups = np.zeros(len(test), dtype=np.int64)
    width = len(spec.feature_names)
    x_train = np.zeros((len(train), width), dtype=np.float32)
    x_test = np.zeros((len(test), width), dtype=np.float32)
    preprocessors = {}
    for group in np.union1d(train_groups, test_groups).tolist():
        tr, te = train_groups == group, test_groups == group
        if not tr.any():
            raise DataError(f"{spec.name}: site {group} has no training rows to fit preprocessing")
        pre = TabularPreprocessor(spec).fit(train[tr])
        x_train[tr] = pre.transform(train[tr])
        if te.any():
            x_test[te] = pre.transform(test[te])
        preprocessors[group] = pre
    return TabularFeatures(x_train, x_test, preprocessors)
