"""Draft a task declaration from a file the coordinator may look at (a public or synthetic
sample), for a person to review before any site maps its rows to it.

The draft is a starting point, not a fit: ranges are the sample's own extremes widened to round
numbers, categories are the values the sample happens to hold. Both say nothing about a site's
rows, and the header of the written file says the draft must be reviewed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from fedmodel.data.errors import DataError
from fedmodel.task import DEFAULT_MISSING, FALSE_TOKENS, TRUE_TOKENS, SiteFiles, TaskConfig

MAX_CATEGORIES = 64
"""More distinct values than this is no category list: the column is left out, with a note."""


def infer_task(
    path: Path, *, label: str, identifiers: list[str], name: str
) -> tuple[TaskConfig, list[str]]:
    """(draft task, notes for the reviewer) from the sample file at ``path``."""
    table = _read(path)
    if label not in table.column_names:
        raise DataError(f"{path}: no label column {label!r}")
    for ident in identifiers:
        if ident not in table.column_names:
            raise DataError(f"{path}: no identifier column {ident!r}")
    notes: list[str] = []
    columns: dict[str, dict[str, Any]] = {}
    for column in table.column_names:
        if column == label or column in identifiers:
            continue
        spec = _column_spec(table.column(column))
        if spec is None:
            notes.append(f"column {column!r} left out: over {MAX_CATEGORIES} distinct text values")
            continue
        columns[column] = spec
    classes = sorted({str(v) for v in _strings(table.column(label)) if v is not None})
    task = TaskConfig.model_validate(
        {"name": name, "kind": "tabular", "label": label, "classes": classes,
         "identifiers": identifiers, "columns": columns}
    )  # fmt: skip
    return task, notes


def _read(path: Path) -> pa.Table:
    try:
        fmt = SiteFiles(path=path).resolved_format()
        if fmt == "csv":
            convert = pacsv.ConvertOptions(
                null_values=list(DEFAULT_MISSING),
                strings_can_be_null=True,
                quoted_strings_can_be_null=True,
            )
            return pacsv.read_csv(path, convert_options=convert)
        if fmt == "parquet":
            return pq.read_table(path)
        if fmt == "jsonl":
            return pajson.read_json(path)
    except ValueError as err:
        raise DataError(str(err)) from None
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: unreadable sample ({type(err).__name__})") from None
    raise DataError(f"{path}: a task is drafted from a table, not {fmt}")


def _strings(values: pa.ChunkedArray) -> list[str | None]:
    return pc.cast(values, pa.string()).to_pylist()


def _column_spec(values: pa.ChunkedArray) -> dict[str, Any] | None:
    kind = values.type
    if pa.types.is_boolean(kind):
        return {"type": "boolean"}
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        low, high = pc.min(values).as_py(), pc.max(values).as_py()
        if low is None:
            return {"type": "numeric", "min": 0.0, "max": 1.0}
        lo, hi = _round_range(float(low), float(high))
        return {"type": "numeric", "min": lo, "max": hi}
    seen = {v for v in _strings(values) if v is not None}
    if seen and {v.lower() for v in seen} <= TRUE_TOKENS | FALSE_TOKENS:
        return {"type": "boolean"}
    if len(seen) > MAX_CATEGORIES:
        return None
    return {"type": "categorical", "categories": sorted(seen)}


def _round_range(low: float, high: float) -> tuple[float, float]:
    """The sample's extremes widened to round numbers at the range's own scale."""
    span = max(high - low, abs(high), abs(low), 1e-9)
    step = 10 ** math.floor(math.log10(span))
    lo, hi = math.floor(low / step) * step, math.ceil(high / step) * step
    if hi <= lo:
        hi = lo + step
    return float(lo), float(hi)
