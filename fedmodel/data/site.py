"""A site's own files, read into a declared task.

Tabular files are read here; image folders by ``fedmodel.data.site_images`` (the same
:class:`Problem` lines, a lazy dataset instead of a matrix); :func:`site_splits` and
:func:`check_site` dispatch on the task's kind.

``read_site_table`` streams a CSV, Parquet or JSONL file with pyarrow (only the columns the task
needs: identifiers are never read), checks every cell against the declaration and writes the
features straight into one preallocated float32 matrix, so memory follows the feature matrix,
not the raw file. Every problem is a :class:`Problem` naming the file, the column and the first
bad row; :func:`site_splits` turns the first one into a ``SiteDataError`` (a signed refusal in a
run), ``fedmodel data check`` prints them all. Messages name rows, never cell values, so a
message cannot carry a patient's data (the local check prints the same lines).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset, TensorDataset

from fedmodel.data.errors import DataError, SiteDataError
from fedmodel.data.split import holdout_split
from fedmodel.task import (
    FALSE_TOKENS,
    TRUE_TOKENS,
    BooleanColumn,
    CategoricalColumn,
    NumericColumn,
    SiteFiles,
    TaskConfig,
)

BLOCK_BYTES = 1 << 20
"""pyarrow reads 1 MiB of CSV at a time: a batch of strings never outgrows this. The streaming
reader keeps a few dozen blocks read ahead (as strings, about twice their bytes), so the block
size sets the reader's own memory: 4 MiB blocks held ~150 MB on top of a 1,000,000 x 30 feature
matrix (114 MB), 1 MiB ~40 MB, at about the same speed (benchmarks/site_data.py)."""


@dataclass(frozen=True)
class Problem:
    """One way a site's file breaks the task: file, column (task name), first bad row."""

    file: Path
    column: str | None
    row: int | None  # 1-based data row (the header is not a row)
    what: str

    def line(self) -> str:
        where = [str(self.file)]
        if self.column is not None:
            where.append(f"column {self.column!r}")
        if self.row is not None:
            where.append(f"row {self.row}")
        return f"{': '.join([', '.join(where), self.what])}"


@dataclass
class Problems:
    """The first bad row per (column, kind of problem): enough to fix a file, never a flood."""

    found: list[Problem] = field(default_factory=list)
    _seen: set[tuple[str | None, str]] = field(default_factory=set)

    def add(self, problem: Problem, kind: str) -> None:
        if (problem.column, kind) not in self._seen:
            self._seen.add((problem.column, kind))
            self.found.append(problem)


@dataclass(frozen=True)
class SiteTable:
    """A file read into the task: features (NaN only where site-median imputation is pending),
    labels as class indices, and every problem found."""

    file: Path
    features: np.ndarray
    labels: np.ndarray
    problems: list[Problem]

    @property
    def rows(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class SiteSplits:
    """A site's training and held-out rows, in the task's layout: a ``TensorDataset`` for a
    table, a lazy ``ImageFolderDataset`` (images opened per row) for an image folder."""

    train: Dataset
    test: Dataset
    site_medians: dict[str, float]


def site_splits(task: TaskConfig, files: SiteFiles) -> SiteSplits:
    """The site's train/test rows; the first problem in either file is a ``SiteDataError``."""
    if task.kind == "text":
        return _text_splits(task, files)
    if task.kind == "image":
        from fedmodel.data.site_images import image_splits

        train, test = image_splits(task, files)
        return SiteSplits(train, test, {})
    train_table = _checked(read_site_table(task, files, files.path))
    if files.test_path is not None:
        test_table = _checked(read_site_table(task, files, files.test_path))
        train_x, train_y = train_table.features, train_table.labels
        test_x, test_y = test_table.features, test_table.labels
    else:
        train_rows, test_rows = holdout_split(train_table.labels, files.test_fraction, files.seed)
        x, y = train_table.features, train_table.labels
        test_x, test_y = x[test_rows], y[test_rows]
        train_x, train_y = keep_rows(x, train_rows), keep_rows(y, train_rows)
    if len(train_y) == 0:
        raise SiteDataError(f"{files.path}: no training rows", column=None)
    medians = fit_site_medians(task, train_x)
    impute_site_medians(task, train_x, medians)
    impute_site_medians(task, test_x, medians)
    return SiteSplits(
        TensorDataset(torch.from_numpy(train_x), torch.from_numpy(train_y)),
        TensorDataset(torch.from_numpy(test_x), torch.from_numpy(test_y)),
        medians,
    )


def keep_rows(a: np.ndarray, rows: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """``a[rows]`` for sorted, distinct ``rows``, moved to the front of ``a`` in place (a view of
    it is returned): the training rows of a holdout never need a second feature matrix.

    Row ``rows[i] >= i``, so every chunk gathers from rows no earlier chunk has written to.
    """
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        a[start : start + len(part)] = a[part]
    return a[: len(rows)]


def _checked(table: SiteTable) -> SiteTable:
    raise_first(table.problems)
    return table


def raise_first(problems: list[Problem]) -> None:
    if problems:
        raise SiteDataError(problems[0].line(), column=problems[0].column)


def _text_splits(task: TaskConfig, files: SiteFiles) -> SiteSplits:
    from fedmodel.data.site_texts import read_site_texts, text_datasets

    train = read_site_texts(task, files, files.path)
    raise_first(train.problems)
    test = None
    if files.test_path is not None:
        test = read_site_texts(task, files, files.test_path)
        raise_first(test.problems)
    train_set, test_set = text_datasets(task, files, train, test)
    return SiteSplits(train_set, test_set, {})


def read_site_table(task: TaskConfig, files: SiteFiles, path: Path) -> SiteTable:
    """Read ``path`` (the site's file or its test file) into the task's feature layout."""
    if task.kind != "tabular":
        raise SiteDataError(f"{path}: read_site_table reads tabular tasks, not {task.kind}")
    problems = Problems()
    opened = open_columns(task, files, path, problems)
    if opened is None:
        return SiteTable(path, _empty(task), np.zeros(0, np.int64), problems.found)
    fmt, wanted = opened
    capacity = _row_capacity(path, fmt)
    features = np.empty((capacity, len(task.feature_names)), dtype=np.float32)
    labels = np.empty(capacity, dtype=np.int64)
    row = 0
    try:
        for batch in column_batches(path, fmt, wanted, task.missing_values):
            n = batch.num_rows
            if row + n > capacity:  # a count that undershot (no trailing newline, say)
                capacity = max(2 * capacity, row + n)
                features = np.resize(features, (capacity, features.shape[1]))
                labels = np.resize(labels, capacity)
            rows = slice(row, row + n)
            encode_batch(task, batch, path, row, features[rows], labels[rows], problems)
            row += n
    except READ_ERRORS as err:
        problems.add(unreadable(path, err, row), "unreadable")
        return SiteTable(path, _empty(task), np.zeros(0, np.int64), problems.found)
    if row == 0:
        problems.add(Problem(path, None, None, "no rows"), "empty")
    pa.default_memory_pool().release_unused()  # the read-ahead's blocks: back to the system
    return SiteTable(path, features[:row], labels[:row], problems.found)


READ_ERRORS = (pa.ArrowException, OSError, UnicodeDecodeError)


def open_columns(
    task: TaskConfig, files: SiteFiles, path: Path, problems: Problems
) -> tuple[str, dict[str, str]] | None:
    """(format, the site's column for each task column), or ``None`` with the problems noted:
    no file, an unreadable header, missing, undeclared or doubly mapped columns."""
    if not path.is_file():
        problems.add(Problem(path, None, None, "no such file"), "missing-file")
        return None
    fmt = files.format or _format_of(path)
    try:
        header = _header(path, fmt)
    except READ_ERRORS as err:
        problems.add(unreadable(path, err), "unreadable")
        return None
    wanted = _map_columns(task, files, header, path, problems)
    return None if problems.found else (fmt, wanted)


def unreadable(path: Path, err: BaseException, row: int = 0) -> Problem:
    """pyarrow's messages can quote a whole line of the file: never pass them on."""
    what = f"unreadable {type(err).__name__} after row {row}" if row else "unreadable file"
    if isinstance(err, pa.ArrowInvalid) and "column" in str(err).lower():
        what = f"malformed row after row {row} (wrong number of fields or bad quoting)"
    return Problem(path, None, None, what)


def _empty(task: TaskConfig) -> np.ndarray:
    return np.zeros((0, len(task.feature_names)), dtype=np.float32)


def _format_of(path: Path) -> str:
    return SiteFiles(path=path).resolved_format()


def _header(path: Path, fmt: str) -> list[str]:
    if fmt == "csv":
        opts = pacsv.ReadOptions(block_size=BLOCK_BYTES)
        with pacsv.open_csv(path, read_options=opts, convert_options=_all_strings()) as reader:
            return list(reader.schema.names)
    if fmt == "parquet":
        return list(pq.ParquetFile(path).schema_arrow.names)
    if fmt == "jsonl":
        return list(pajson.read_json(path).schema.names)
    raise SiteDataError(f"{path}: format {fmt!r} is not a table", column=None)


def _all_strings() -> pacsv.ConvertOptions:
    """Header sniffing: infer nothing (a typed guess would fail on the first odd cell)."""
    return pacsv.ConvertOptions(column_types={}, strings_can_be_null=False, include_columns=[])


def _map_columns(
    task: TaskConfig, files: SiteFiles, header: list[str], path: Path, problems: Problems
) -> dict[str, str]:
    """The site's column for each task column; missing, unknown and duplicate columns are
    problems. Identifiers and ``ignore`` columns are allowed and never read."""
    seen: dict[str, str] = {}
    for site_name in header:
        if site_name in files.ignore:
            continue
        name = files.columns.get(site_name, site_name)
        if name in seen:
            problems.add(Problem(path, name, None, "two columns map to it"), "duplicate")
        seen[name] = site_name
    for site_name in files.columns:
        if site_name not in header:
            problems.add(
                Problem(path, files.columns[site_name], None, f"mapped from {site_name!r}, which "
                        "the file does not have"), "mapping")  # fmt: skip
    needed = task_columns(task)
    for name in needed:
        if name not in seen:
            problems.add(Problem(path, name, None, "missing column"), "missing")
    for name in seen:
        if name not in needed and name not in task.identifiers:
            problems.add(
                Problem(path, name, None, "column not in the task (declare it an identifier, or "
                        "list it in [data] ignore)"), "extra")  # fmt: skip
    return {name: seen[name] for name in needed if name in seen}


def task_columns(task: TaskConfig) -> list[str]:
    """The task's names of the columns a site reads: the label, then the features."""
    if task.kind == "text":
        assert task.text_column is not None
        return [task.label, task.text_column]
    return [task.label, *task.columns]


def _row_capacity(path: Path, fmt: str) -> int:
    """An upper bound on the rows, so the feature matrix is allocated once (never copied)."""
    if fmt == "parquet":
        return max(1, pq.ParquetFile(path).metadata.num_rows)
    newlines = 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 24):
            newlines += chunk.count(b"\n")
    return newlines + 1


def column_batches(
    path: Path, fmt: str, wanted: dict[str, str], missing: list[str]
) -> Iterator[pa.RecordBatch]:
    """Batches holding exactly the wanted columns, renamed to the task's names."""
    site_names = list(wanted.values())
    task_names = list(wanted)
    if fmt == "csv":
        convert = pacsv.ConvertOptions(
            include_columns=site_names,
            column_types={c: pa.string() for c in site_names},
            null_values=missing,
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
        )
        opts = pacsv.ReadOptions(block_size=BLOCK_BYTES)
        with pacsv.open_csv(path, read_options=opts, convert_options=convert) as reader:
            for batch in reader:
                yield pa.RecordBatch.from_arrays(
                    [batch.column(c) for c in site_names], names=task_names
                )
        return
    if fmt == "parquet":
        for batch in pq.ParquetFile(path).iter_batches(batch_size=65536, columns=site_names):
            yield _nulls_from_tokens(batch, site_names, task_names, missing)
        return
    table = pajson.read_json(path).select(site_names)
    for batch in table.to_batches(max_chunksize=65536):
        yield _nulls_from_tokens(batch, site_names, task_names, missing)


def _nulls_from_tokens(
    batch: pa.RecordBatch, site_names: list[str], task_names: list[str], missing: list[str]
) -> pa.RecordBatch:
    """Formats with typed cells: strings that are a missing token become nulls, as in CSV."""
    tokens = pa.array(missing, type=pa.string())
    arrays = []
    for name in site_names:
        col = batch.column(name)
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            col = pc.if_else(pc.is_in(col, value_set=tokens), pa.nulls(len(col), col.type), col)
        arrays.append(col)
    return pa.RecordBatch.from_arrays(arrays, names=task_names)


def encode_batch(
    task: TaskConfig,
    batch: pa.RecordBatch,
    path: Path,
    first_row: int,
    out: np.ndarray,
    labels: np.ndarray,
    problems: Problems,
) -> None:
    """Write one batch into ``out`` (its rows of the feature matrix) and ``labels``."""
    labels[:] = encode_labels(task, batch.column(task.label), path, first_row, problems)
    encode_features(task, batch, path, first_row, out, problems)


def encode_features(
    task: TaskConfig,
    batch: pa.RecordBatch,
    path: Path,
    first_row: int,
    out: np.ndarray,
    problems: Problems,
) -> None:
    """Write one batch's feature columns into ``out``: the one encoder every table goes
    through, a site's own file or a packaged dataset (:func:`encode_frame`)."""
    col = 0
    for name, spec in task.columns.items():
        values = batch.column(name)
        if isinstance(spec, NumericColumn):
            width = _encode_numeric(name, spec, values, path, first_row, out, col, problems)
        elif isinstance(spec, CategoricalColumn):
            width = _encode_categorical(name, spec, values, path, first_row, out, col, problems)
        else:
            width = _encode_boolean(name, spec, values, path, first_row, out, col, problems)
        col += width


def encode_frame(task: TaskConfig, frame: pd.DataFrame, source: Path) -> np.ndarray:
    """A packaged dataset's table, already read, anonymised and labelled by its loader, through
    the encoder a site's own file goes through: declared ranges, categories and imputation, no
    statistic of anyone's rows. ``frame``'s row ``i`` is data row ``i + 1`` of ``source`` in
    any problem; the first problem is a ``SiteDataError``. Site-median columns stay NaN for
    :func:`impute_per_site`."""
    names = list(task.columns)
    batch = pa.RecordBatch.from_arrays([_arrow_column(frame[c]) for c in names], names=names)
    out = np.empty((len(frame), len(task.feature_names)), dtype=np.float32)
    problems = Problems()
    encode_features(task, batch, source, 0, out, problems)
    raise_first(problems.found)
    return out


def _arrow_column(values: pd.Series) -> pa.Array:
    """A pandas column as arrow (NaN as null); a column of mixed types as strings, so the
    encoder names its bad cell instead of arrow refusing the whole column."""
    try:
        return pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if pd.isna(v) else str(v) for v in values], type=pa.string())


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _refuse_missing(rule: str, missing: np.ndarray, at: Problem, problems: Problems) -> None:
    """A column declared ``missing = "refuse"`` names its first empty cell."""
    if rule == "refuse" and missing.any():
        row = (at.row or 0) + _first(missing) + 1
        problems.add(Problem(at.file, at.column, row, "missing value"), "missing")


def cell_strings(values: pa.Array) -> np.ndarray:
    """A column as Python strings or None (integers without a trailing .0)."""
    if pa.types.is_floating(values.type):
        floats = values.to_numpy(zero_copy_only=False, writable=True)
        integral = np.isfinite(floats) & (floats == np.round(floats))
        shown = [
            None if np.isnan(v) else (str(int(v)) if whole else str(v))
            for v, whole in zip(floats, integral, strict=True)
        ]
        return np.asarray(shown, dtype=object)
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        values = pc.cast(values, pa.string())
    return np.asarray(pc.utf8_trim_whitespace(values).to_pylist(), dtype=object)


def encode_labels(
    task: TaskConfig, values: pa.Array, path: Path, first_row: int, problems: Problems
) -> np.ndarray:
    text = cell_strings(values)
    index = {c: i for i, c in enumerate(task.classes)}
    out = np.zeros(len(text), dtype=np.int64)
    for i, v in enumerate(text):
        if v is None:
            problems.add(Problem(path, task.label, first_row + i + 1, "missing label"), "missing")
        elif v not in index:
            problems.add(
                Problem(path, task.label, first_row + i + 1, "label outside the declared classes"),
                "unknown",
            )
        else:
            out[i] = index[v]
    return out


def _numbers(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(float64 values with NaN for nulls, mask of cells that are not numbers)."""
    if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
        floats = pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False, writable=True)
        return floats, np.zeros(len(floats), dtype=bool)
    if pa.types.is_boolean(values.type):
        return np.zeros(len(values)), np.ones(len(values), dtype=bool)
    trimmed = pc.utf8_trim_whitespace(pc.cast(values, pa.string()))
    try:
        floats = pc.cast(trimmed, pa.float64()).to_numpy(zero_copy_only=False, writable=True)
        return floats, np.zeros(len(floats), dtype=bool)
    except pa.ArrowInvalid:
        text = trimmed.to_pylist()
        floats = np.full(len(text), np.nan)
        bad = np.zeros(len(text), dtype=bool)
        for i, v in enumerate(text):
            if v is None:
                continue
            try:
                floats[i] = float(v)
            except ValueError:
                bad[i] = True
        return floats, bad


def _encode_numeric(
    name: str,
    spec: NumericColumn,
    values: pa.Array,
    path: Path,
    first_row: int,
    out: np.ndarray,
    col: int,
    problems: Problems,
) -> int:
    floats, bad = _numbers(values)
    if bad.any():
        problems.add(Problem(path, name, first_row + _first(bad) + 1, "not a number"), "type")
    floats[bad] = np.nan
    if spec.zero_means_missing:
        floats[floats == 0] = np.nan
    missing = np.isnan(floats) & ~bad
    _refuse_missing(spec.missing, missing, Problem(path, name, first_row, ""), problems)
    outside = ~np.isnan(floats) & ((floats < spec.min) | (floats > spec.max))
    if outside.any():
        if spec.out_of_range == "refuse":
            problems.add(
                Problem(path, name, first_row + _first(outside) + 1,
                        f"value outside the declared range [{spec.min:g}, {spec.max:g}]"),
                "range",
            )  # fmt: skip
        floats = np.clip(floats, spec.min, spec.max)
    scaled = 2.0 * (floats - spec.min) / (spec.max - spec.min) - 1.0
    if spec.impute != "site-median":
        fill = 0.0 if spec.impute == "mid-range" else _scale(spec, float(spec.impute))
        scaled[np.isnan(scaled)] = fill
    out[:, col] = scaled
    if spec.missing == "impute":
        out[:, col + 1] = np.isnan(floats) | bad
        return 2
    return 1


def _scale(spec: NumericColumn, value: float) -> float:
    return 2.0 * (value - spec.min) / (spec.max - spec.min) - 1.0


def _encode_categorical(
    name: str,
    spec: CategoricalColumn,
    values: pa.Array,
    path: Path,
    first_row: int,
    out: np.ndarray,
    col: int,
    problems: Problems,
) -> int:
    text = cell_strings(values)
    width = len(spec.categories) + (1 if spec.unknown == "other" else 0)
    block = np.zeros((len(text), width), dtype=np.float32)
    index = {c: i for i, c in enumerate(spec.categories)}
    missing = np.zeros(len(text), dtype=bool)
    for i, v in enumerate(text):
        if v is None:
            missing[i] = True
        elif v in index:
            block[i, index[v]] = 1.0
        elif spec.unknown == "other":
            block[i, -1] = 1.0
        else:
            problems.add(
                Problem(path, name, first_row + i + 1, "value outside the declared categories"),
                "unknown",
            )
    _refuse_missing(spec.missing, missing, Problem(path, name, first_row, ""), problems)
    out[:, col : col + width] = block
    if spec.missing == "impute":
        out[:, col + width] = missing
        return width + 1
    return width


def _encode_boolean(
    name: str,
    spec: BooleanColumn,
    values: pa.Array,
    path: Path,
    first_row: int,
    out: np.ndarray,
    col: int,
    problems: Problems,
) -> int:
    if pa.types.is_boolean(values.type):
        text = np.asarray([None if v is None else str(v) for v in values.to_pylist()], dtype=object)
    else:
        text = cell_strings(values)
    flags = np.zeros(len(text), dtype=np.float32)
    missing = np.zeros(len(text), dtype=bool)
    for i, v in enumerate(text):
        if v is None:
            missing[i] = True
        elif v.lower() in TRUE_TOKENS:
            flags[i] = 1.0
        elif v.lower() not in FALSE_TOKENS:
            problems.add(Problem(path, name, first_row + i + 1, "not a boolean"), "type")
    _refuse_missing(spec.missing, missing, Problem(path, name, first_row, ""), problems)
    out[:, col] = flags
    if spec.missing == "impute":
        out[:, col + 1] = missing
        return 2
    return 1


def feature_slots(task: TaskConfig) -> dict[str, int]:
    """Where each numeric column's value sits in the feature layout."""
    slots, col = {}, 0
    for name, spec in task.columns.items():
        slots[name] = col
        if isinstance(spec, CategoricalColumn):
            col += len(spec.categories) + (1 if spec.unknown == "other" else 0)
        else:
            col += 1
        col += 1 if spec.missing == "impute" else 0
    return slots


def fit_site_medians(task: TaskConfig, train_x: np.ndarray) -> dict[str, float]:
    """Medians of this site's own training rows, for columns declared ``site-median``."""
    slots = feature_slots(task)
    medians = {}
    for name in task.site_fitted:
        column = train_x[:, slots[name]]
        observed = column[~np.isnan(column)]
        medians[name] = float(np.median(observed)) if len(observed) else 0.0
    return medians


def impute_site_medians(task: TaskConfig, x: np.ndarray, medians: dict[str, float]) -> None:
    slots = feature_slots(task)
    for name, value in medians.items():
        column = x[:, slots[name]]
        column[np.isnan(column)] = value


def impute_per_site(
    task: TaskConfig,
    x_train: np.ndarray,
    x_test: np.ndarray,
    train_sites: np.ndarray | None,
    test_sites: np.ndarray | None,
) -> None:
    """Site-median columns of a packaged table with natural sites (heart's hospitals): each
    site's medians fitted on its own training rows and used for its rows only, as each site
    does with its own file. Without sites the table is one site. A site with held-out rows but
    no training rows is a ``DataError``: borrowing another site's medians is the leak this
    avoids."""
    if not task.site_fitted:
        return
    if train_sites is None or test_sites is None:
        train_sites = np.zeros(len(x_train), dtype=np.int64)
        test_sites = np.zeros(len(x_test), dtype=np.int64)
    for site in np.union1d(train_sites, test_sites).tolist():
        train_rows, test_rows = train_sites == site, test_sites == site
        if not train_rows.any():
            raise DataError(f"{task.name}: site {site} has no training rows to fit its medians")
        medians = fit_site_medians(task, x_train[train_rows])
        for x, rows in ((x_train, train_rows), (x_test, test_rows)):
            part = x[rows]
            impute_site_medians(task, part, medians)
            x[rows] = part


@dataclass(frozen=True)
class SiteCheck:
    """``fedmodel data check``: what a site's files hold for a task, and every problem."""

    files: list[Path]
    rows: dict[str, int]  # "train" / "test" -> rows read
    label_counts: dict[str, list[int]]  # per split, one count per declared class
    problems: list[Problem]


def check_site(task: TaskConfig, files: SiteFiles) -> SiteCheck:
    """Read every file the site names for ``task``; nothing is trained, nothing is sent."""
    paths = {"train": files.path} | ({"test": files.test_path} if files.test_path else {})
    rows, counts, problems = {}, {}, []
    for split, path in paths.items():
        labels, found = _read_for_check(task, files, path)
        rows[split] = len(labels)
        counts[split] = np.bincount(labels, minlength=task.num_classes).tolist()
        problems += found
    return SiteCheck(list(paths.values()), rows, counts, problems)


def _read_for_check(task: TaskConfig, files: SiteFiles, path: Path) -> tuple[np.ndarray, list]:
    """(labels, problems) of one file or image folder: images are verified, never decoded."""
    if task.kind == "image":
        from fedmodel.data.site_images import scan_folder

        scan = scan_folder(task, path)
        return scan.labels, scan.problems
    if task.kind == "text":
        from fedmodel.data.site_texts import read_site_texts

        texts = read_site_texts(task, files, path)
        return texts.labels, texts.problems
    table = read_site_table(task, files, path)
    return table.labels, table.problems
