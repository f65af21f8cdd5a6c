"""A declared task: the shape of the data every site maps its own files to, never the data.

The coordinator writes a ``[task]`` table; each site reads its own files into it. Everything that
turns a value into a feature (range scaling, one-hot order, the imputed value, the "other"
bucket) comes from this declaration, so no statistic of one site's rows shapes another site's
model and every site produces the same feature layout. The one exception a task may ask for,
``impute = "site-median"``, is fitted at each site on its own training rows only.

This module holds the schema and the feature layout; reading files is ``fedmodel.data.site``.
It imports nothing from the rest of fedmodel so that ``fedmodel.config`` can embed it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

TASK_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
COLUMN_PATTERN = r"^[^\x00-\x1f]{1,128}$"
DEFAULT_MISSING = ("", "NA", "N/A", "NaN", "nan", "null", "?")
TRUE_TOKENS = frozenset({"true", "t", "yes", "y", "1"})
FALSE_TOKENS = frozenset({"false", "f", "no", "n", "0"})
DataFormat = Literal["csv", "parquet", "jsonl", "image-folder"]
SUFFIX_FORMATS: dict[str, DataFormat] = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class NumericColumn(_Strict):
    """A number in a declared range, scaled to [-1, 1] by that range (not by any site's rows)."""

    type: Literal["numeric"] = "numeric"
    min: float
    max: float
    out_of_range: Literal["refuse", "clip"] = "refuse"
    missing: Literal["impute", "refuse"] = "impute"
    impute: float | Literal["mid-range", "site-median"] = Field(
        "mid-range",
        description="value for a missing cell: a number, the range's middle, or the median of "
        "this site's own training rows (fitted at the site, stated in the report)",
    )
    zero_means_missing: bool = Field(False, description="0 records 'not measured' (heart chol)")

    @model_validator(mode="after")
    def _range(self) -> NumericColumn:
        if not self.max > self.min:
            raise ValueError(f"max ({self.max}) must be above min ({self.min})")
        if isinstance(self.impute, float | int) and not self.min <= self.impute <= self.max:
            raise ValueError(f"impute {self.impute} outside [{self.min}, {self.max}]")
        return self


class CategoricalColumn(_Strict):
    """One of a declared list of values, one-hot in the declared order."""

    type: Literal["categorical"] = "categorical"
    categories: list[str] = Field(min_length=1)
    unknown: Literal["refuse", "other"] = Field(
        "refuse", description="a value outside the list: refuse the file, or an 'other' slot"
    )
    missing: Literal["impute", "refuse"] = Field(
        "impute", description="impute: all-zero one-hot plus the missing flag"
    )

    @model_validator(mode="after")
    def _unique(self) -> CategoricalColumn:
        if len(set(self.categories)) != len(self.categories):
            raise ValueError("categories must be unique")
        return self


class BooleanColumn(_Strict):
    """true/false, yes/no, 1/0 (any case), one feature."""

    type: Literal["boolean"] = "boolean"
    missing: Literal["impute", "refuse"] = "impute"


Column = Annotated[NumericColumn | CategoricalColumn | BooleanColumn, Field(discriminator="type")]


class ImageSpec(_Strict):
    """What every site's images become: channels x height x width, pixels scaled to [-1, 1]."""

    channels: Literal[1, 3] = 1
    height: int = Field(28, ge=4, le=1024)
    width: int = Field(28, ge=4, le=1024)
    resize: Literal["stretch", "fit", "crop"] = Field(
        "stretch",
        description="stretch to the size; fit: keep the aspect ratio and pad; crop: keep the "
        "aspect ratio and cut the centre",
    )


class TaskConfig(_Strict):
    """``[task]``: what the coordinator declares and every site maps its files to."""

    name: str = Field(pattern=TASK_NAME_PATTERN)
    kind: Literal["tabular", "image", "text"]
    label: str = Field("label", pattern=COLUMN_PATTERN)
    classes: list[str] = Field(min_length=2, description="label values, in class-index order")
    identifiers: list[str] = Field(
        default_factory=list,
        description="direct identifiers: never read into features, any message or any log",
    )
    missing_values: list[str] = Field(
        default_factory=lambda: list(DEFAULT_MISSING), description="cells that mean 'missing'"
    )
    columns: dict[str, Column] = Field(default_factory=dict, description="tabular features")
    image: ImageSpec | None = None
    text_column: str | None = Field(None, pattern=COLUMN_PATTERN)
    max_length: int = Field(64, ge=8, le=512, description="tokens per text")

    @model_validator(mode="after")
    def _consistent(self) -> TaskConfig:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("classes must be unique")
        named = [self.label, *self.columns, *([self.text_column] if self.text_column else [])]
        clash = sorted(set(self.identifiers) & set(named))
        if clash:
            raise ValueError(f"identifier {clash[0]!r} is also a label or feature column")
        if self.label in self.columns or self.label == self.text_column:
            raise ValueError(f"label {self.label!r} is also a feature column")
        if self.kind == "tabular" and not self.columns:
            raise ValueError("a tabular task declares at least one column")
        if self.kind != "tabular" and self.columns:
            raise ValueError(f"columns are for tabular tasks, not {self.kind}")
        if self.kind == "text" and self.text_column is None:
            raise ValueError("a text task names its text_column")
        if self.kind != "text" and self.text_column is not None:
            raise ValueError(f"text_column is for text tasks, not {self.kind}")
        if self.kind == "image" and self.image is None:
            self.image = ImageSpec()
        if self.kind != "image" and self.image is not None:
            raise ValueError(f"[task.image] is for image tasks, not {self.kind}")
        return self

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def feature_names(self) -> list[str]:
        """The tabular feature layout, fixed by the declaration (same at every site)."""
        names: list[str] = []
        for column, spec in self.columns.items():
            if isinstance(spec, CategoricalColumn):
                names += [f"{column}={v}" for v in spec.categories]
                if spec.unknown == "other":
                    names.append(f"{column}=(other)")
            else:
                names.append(column)
            if spec.missing == "impute":
                names.append(f"{column} missing")
        return names

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One example's shape: what the model is built for, before any site has read a row."""
        if self.kind == "tabular":
            return (len(self.feature_names),)
        if self.kind == "image":
            assert self.image is not None
            return (self.image.channels, self.image.height, self.image.width)
        return (self.max_length,)

    @property
    def site_fitted(self) -> list[str]:
        """Columns whose imputed value each site fits on its own training rows."""
        return [
            c
            for c, s in self.columns.items()
            if isinstance(s, NumericColumn) and s.impute == "site-median"
        ]


class SiteFiles(_Strict):
    """Where one site's rows are and how its names map to the task's (``node.toml [data]``)."""

    path: Path = Field(description="the site's file, or folder (image-folder)")
    format: DataFormat | None = Field(None, description="absent: from the file's suffix")
    columns: dict[str, str] = Field(
        default_factory=dict, description="this site's column names -> the task's names"
    )
    ignore: list[str] = Field(
        default_factory=list, description="this site's columns that are neither read nor refused"
    )
    test_path: Path | None = Field(None, description="the site's own held-out rows")
    test_fraction: float = Field(
        0.2, gt=0, lt=1, description="held out of path (stratified) when test_path is absent"
    )
    seed: int = 0
    cache_dir: Path | None = Field(
        None,
        description="where tokenised rows are cached on this site's disk (a node sets its own "
        "cache_dir); none: tokenised every time",
    )

    def resolved_format(self) -> DataFormat:
        if self.format is not None:
            return self.format
        if self.path.is_dir():
            return "image-folder"
        found = SUFFIX_FORMATS.get(self.path.suffix.lower())
        if found is None:
            raise ValueError(f"{self.path}: cannot tell the format from the suffix; set format")
        return found

    def resolved(self, base: Path) -> SiteFiles:
        """Relative paths are relative to the file that names them."""
        return self.model_copy(
            update={
                "path": self.path if self.path.is_absolute() else base / self.path,
                "test_path": None
                if self.test_path is None
                else (self.test_path if self.test_path.is_absolute() else base / self.test_path),
            }
        )


def load_task(path: Path) -> TaskConfig:
    """A task TOML (the ``[task]`` table, or its fields at the top level), or a scenario with a
    ``[task]`` table; every failure is one ``ConfigError`` line naming the file and field."""
    from fedmodel.config import parse_config, read_toml  # config embeds this module

    data = read_toml(path)
    return parse_config(TaskConfig, data.get("task", data), f"{path}: task")
