"""A site's own texts for a declared text task: a label column and a text column in a CSV,
Parquet or JSONL file, tokenised at the site with the packaged MiniLM tokenizer.

Reading, column mapping and label checks are the tabular reader's (``fedmodel.data.site``):
only the label and text columns are read, identifiers never. A missing text is a problem like a
missing label; a text longer than ``max_length`` tokens is truncated, as the task declares.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from fedmodel.data.site import (
    READ_ERRORS,
    Problem,
    Problems,
    cell_strings,
    column_batches,
    encode_labels,
    open_columns,
    unreadable,
)
from fedmodel.data.split import holdout_split
from fedmodel.data.tokenize import tokenize_texts
from fedmodel.task import SiteFiles, TaskConfig


@dataclass(frozen=True)
class SiteTexts:
    """A file's texts and class indices, and every problem found."""

    file: Path
    texts: list[str]
    labels: np.ndarray
    problems: list[Problem]

    @property
    def rows(self) -> int:
        return len(self.labels)


def read_site_texts(task: TaskConfig, files: SiteFiles, path: Path) -> SiteTexts:
    """Read ``path`` into (texts, labels); problems name the file, the column and the row."""
    assert task.text_column is not None
    problems = Problems()
    empty = SiteTexts(path, [], np.zeros(0, np.int64), problems.found)
    opened = open_columns(task, files, path, problems)
    if opened is None:
        return empty
    fmt, wanted = opened
    texts: list[str] = []
    labels: list[np.ndarray] = []
    try:
        for batch in column_batches(path, fmt, wanted, task.missing_values):
            first = len(texts)
            labels.append(encode_labels(task, batch.column(task.label), path, first, problems))
            cells = cell_strings(batch.column(task.text_column))
            for i, text in enumerate(cells):
                if text is None:
                    row = first + i + 1
                    problems.add(Problem(path, task.text_column, row, "missing text"), "missing")
            texts.extend("" if t is None else t for t in cells)
    except READ_ERRORS as err:
        problems.add(unreadable(path, err, len(texts)), "unreadable")
        return empty
    if not texts:
        problems.add(Problem(path, None, None, "no rows"), "empty")
    y = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    return SiteTexts(path, texts, y, problems.found)


def text_datasets(
    task: TaskConfig, files: SiteFiles, train: SiteTexts, test: SiteTexts | None
) -> tuple[TensorDataset, TensorDataset]:
    """Tokenised (input_ids, attention_mask, label) train and test sets; without a test file,
    a stratified seeded share of the site's rows is held out."""
    if test is None:
        train_rows, test_rows = holdout_split(train.labels, files.test_fraction, files.seed)
        pairs = [(train.texts, train.labels, train_rows), (train.texts, train.labels, test_rows)]
    else:
        pairs = [
            (train.texts, train.labels, np.arange(train.rows)),
            (test.texts, test.labels, np.arange(test.rows)),
        ]
    out = []
    for texts, labels, rows in pairs:
        ids, mask = tokenize_texts(
            [texts[i] for i in rows], task.max_length, cache_dir=files.cache_dir
        )
        out.append(TensorDataset(ids, mask, torch.from_numpy(labels[rows].astype(np.int64))))
    return out[0], out[1]
