"""Reading tabular files defensively, and the in-memory shape every tabular loader returns.

A wrong or truncated file must fail with one line naming the file and what is wrong, not with a
``KeyError`` deep inside preprocessing, so every CSV goes through :func:`read_csv_checked`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pandas as pd

from fedmodel.data.errors import DataError
from fedmodel.task import TaskConfig

LABEL = "label"
"""Column holding the integer class label in every loaded frame."""
SITE = "site"
"""Column holding the integer site (hospital) index, for datasets with natural sites."""


@dataclass(frozen=True)
class TabularData:
    """A loaded, anonymised table: the task's feature columns plus ``LABEL`` (and ``SITE``).

    ``task`` is the dataset's declaration (ranges, categories, imputation): the packaged table
    goes through the same encoder as a site's own file. ``test`` is the dataset's natural test
    set, or ``None`` when a held-out share must be split off. ``group_names`` is non-empty
    exactly when the frames carry a ``SITE`` column. ``source``/``test_source`` name the files
    in any problem.
    """

    task: TaskConfig
    train: pd.DataFrame
    test: pd.DataFrame | None
    class_names: tuple[str, ...]
    group_names: tuple[str, ...] = ()
    source: Path = Path(".")
    test_source: Path | None = None


def read_csv_checked(
    path: Path, dataset: str, columns: tuple[str, ...], *, header: bool = True, **kwargs: Any
) -> pd.DataFrame:
    """Read a CSV and check its columns; every failure is a one-line ``DataError``.

    With ``header=True`` the file must contain ``columns`` (extra ones are allowed). Without a
    header it must have exactly ``len(columns)`` fields per row, which are then named ``columns``;
    passing ``names=`` to pandas instead would silently turn surplus fields into an index.
    """
    try:
        frame = pd.read_csv(path, header=0 if header else None, **kwargs)
    except FileNotFoundError:
        raise DataError(f"{path}: no such {dataset} file") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{path}: malformed {dataset} file: {reason}") from None
    if not header:
        if frame.shape[1] != len(columns):
            raise DataError(
                f"{path}: malformed {dataset} file: {frame.shape[1]} fields per row, "
                f"expected {len(columns)}"
            )
        frame.columns = list(columns)
        return frame
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: malformed {dataset} file: missing column(s) {', '.join(missing)}")
    return frame


def check_values(
    frame: pd.DataFrame, column: str, allowed: set[Any] | frozenset[Any], source: str
) -> None:
    """Fail naming the file and column when ``column`` holds a value outside ``allowed``."""
    bad = sorted({str(v) for v in frame[column].dropna().unique() if v not in allowed})
    if bad or frame[column].isna().any():
        shown = ", ".join(bad[:5]) if bad else "empty value"
        raise DataError(f"{source}: column {column!r} has unexpected value(s): {shown}")


def packaged_task(
    name: str,
    classes: Sequence[str],
    numeric: Mapping[str, Mapping[str, Any]],
    categorical: Mapping[str, Sequence[str]] = MappingProxyType({}),
    *,
    booleans: Sequence[str] = (),
    may_be_missing: Sequence[str] | None = None,
    label: str = LABEL,
    identifiers: Sequence[str] = (),
) -> TaskConfig:
    """A packaged dataset's declaration, in the form a coordinator writes ``[task]``.

    ``numeric`` maps each column to its ``NumericColumn`` fields (at least ``min``/``max``);
    ``booleans`` are categorical columns that are really true/false. Columns in
    ``may_be_missing`` (all, when ``None``) are imputed with a missing flag; the rest refuse a
    missing cell, so a complete table gets no flag column it would never use.
    """

    def missing(column: str) -> str:
        return "impute" if may_be_missing is None or column in may_be_missing else "refuse"

    columns: dict[str, dict[str, Any]] = {
        c: {"type": "numeric", "missing": missing(c), **spec} for c, spec in numeric.items()
    }
    for column, values in categorical.items():
        if column in booleans:
            columns[column] = {"type": "boolean", "missing": missing(column)}
        else:
            columns[column] = {
                "type": "categorical",
                "categories": list(values),
                "missing": missing(column),
            }
    return TaskConfig.model_validate(
        {
            "name": name,
            "kind": "tabular",
            "label": label,
            "classes": list(classes),
            "identifiers": list(identifiers),
            "columns": columns,
        }
    )
