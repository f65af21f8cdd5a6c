"""The frozen trunk computed once: DP-SGD then runs on the trainable top only.

A model whose lower layers are frozen (``MiniLMClassifier`` with ``head``, ``top-k`` or
``lora-top-k``; ``ScatterNet``'s wavelet scattering) computes the same function of each row in
those layers in every step of every round. This module runs them once over a site's rows, keeps
the outputs in the site's cache (:mod:`fedmodel.cache`, keyed by the trunk's digest and the
rows' digest) and hands the training loop a dataset of ``(trunk outputs, attention mask,
label)`` (text) or ``(trunk outputs, label)`` (images) that the model's ``forward`` accepts in
place of its raw inputs.

Why the privacy guarantee is unchanged: the trunk is the public pretrained checkpoint (or a
fixed transform), never trained, so its output for a row is a fixed function of that row alone
(post-processing of one record, no other record and no noise involved). DP-SGD's per-sample
clipping bounds the gradient of each row's loss with respect to the trainable parameters,
which is the same gradient whether the row enters raw or as its trunk outputs; the sensitivity,
noise and accounting do not change. The cached outputs stay on the site's disk; only the DP
update leaves.

A site also keeps its *own* copy of the public trunk weights when it loads the global model
(:func:`load_global_state`): FedAvg's float32 weighted mean of identical frozen tensors is not
always bitwise identical to them, which would change the digest and recompute the trunk every
round, and a frozen weight the server altered is not the public checkpoint any more.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from fedmodel.cache import TensorCache, digest, tensors_digest
from fedmodel.config import TrainConfig
from fedmodel.data.preprocess import ShiftAugmented
from fedmodel.device import autocast_for, resolve_device
from fedmodel.training.errors import TrainingError

TRUNK_BATCH = 128
TRUNK_SUBDIR = "trunk"

log = logging.getLogger(__name__)


@runtime_checkable
class TrunkModel(Protocol):
    """A model with frozen leading layers whose outputs ``forward`` also accepts. ``trunk``
    takes token ids and mask, or images when the model says ``trunk_input = "image"``."""

    frozen_layers: int

    def trunk(self, *inputs: Tensor) -> Tensor: ...  # token ids and mask, or images

    def trunk_digest(self) -> str: ...

    def trunk_state(self) -> dict[str, Tensor]: ...


def has_trunk(model: nn.Module) -> bool:
    """True when ``model`` has frozen leading layers worth computing once."""
    return isinstance(model, TrunkModel) and model.frozen_layers > 0


@dataclass(frozen=True)
class TrunkRows:
    """A site's rows as trunk outputs, and how they were obtained."""

    dataset: TensorDataset
    hit: bool  # read from the cache (False: computed now)
    seconds: float
    key: str


def load_global_state(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """``model.load_state_dict(state)``, except that a trunk model keeps its own trunk weights
    (the public checkpoint it was built from; see module doc)."""
    if not has_trunk(model):
        model.load_state_dict(state)
        return
    own = model.trunk_state()  # type: ignore[attr-defined]
    merged = {k: own.get(k, v) for k, v in state.items()}
    model.load_state_dict(merged)


def _held_tensors(dataset: Dataset, count: int) -> tuple[Tensor, ...] | None:
    """The ``count`` tensors of a ``TensorDataset`` (or the rows of a ``Subset`` of one), sliced
    without a copy through a loader; None for any other dataset."""
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    if not (isinstance(base, TensorDataset) and len(base.tensors) == count):
        return None
    if not isinstance(dataset, Subset):
        return tuple(base.tensors)
    index = torch.as_tensor(list(dataset.indices), dtype=torch.int64)
    return tuple(t[index] for t in base.tensors)


def _read_rows(dataset: Dataset, count: int, what: str) -> tuple[Tensor, ...]:
    """Every row of ``dataset`` read once, in order, as ``count`` stacked tensors."""
    batches = list(DataLoader(dataset, batch_size=1024, shuffle=False))
    if not batches or len(batches[0]) != count:
        raise TrainingError(f"trunk cache: expected {what}")
    return tuple(torch.cat([b[i] for b in batches]) for i in range(count))


def text_tensors(dataset: Dataset) -> tuple[Tensor, Tensor, Tensor]:
    """``(input_ids, attention_mask, labels)`` of a text dataset, without copying a whole
    ``TensorDataset`` (or a ``Subset`` of one) through a loader."""
    held = _held_tensors(dataset, 3) or _read_rows(
        dataset, 3, "text rows (input_ids, attention_mask, label)"
    )
    return held  # type: ignore[return-value]


def image_tensors(dataset: Dataset) -> tuple[Tensor, Tensor]:
    """``(images, labels)`` of image rows: sliced out of a ``TensorDataset`` (or a ``Subset`` of
    one), else read once in order (a site's image folders)."""
    held = _held_tensors(dataset, 2) or _read_rows(dataset, 2, "image rows (image, label)")
    return held  # type: ignore[return-value]


def augmented(dataset: Dataset) -> bool:
    """Whether rows change at every access (random shifts): a trunk computed once would freeze
    one draw of them, a different training set, so such rows go through the model's trunk in
    every step instead."""
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    return isinstance(base, ShiftAugmented)


def _takes_images(model: nn.Module) -> bool:
    return getattr(model, "trunk_input", "text") == "image"


def row_lengths(dataset: Dataset) -> Tensor | None:
    """Tokens per row of text rows - ``(token ids or trunk outputs, attention mask, label)``
    held in a ``TensorDataset`` or a ``Subset`` of one - in dataset order; None for any other
    data (nothing is read through a loader to find out)."""
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    if not (isinstance(base, TensorDataset) and len(base.tensors) == 3):
        return None
    mask = base.tensors[1]
    if mask.dim() != 2 or mask.is_floating_point():
        return None
    lengths = mask.sum(1)
    if isinstance(dataset, Subset):
        lengths = lengths[torch.as_tensor(list(dataset.indices), dtype=torch.int64)]
    return lengths


def trunk_rows(
    model: nn.Module,
    dataset: Dataset,
    cache_dir: Path | None,
    *,
    device: torch.device,
    batch_size: int = TRUNK_BATCH,
) -> TrunkRows:
    """The rows of ``dataset`` as ``(trunk outputs, mask, label)``, from the cache when the same
    trunk already ran on the same rows (``cache_dir`` None: computed, not stored)."""
    if not has_trunk(model):
        raise TrainingError("trunk cache: the model has no frozen trunk")
    started = time.perf_counter()
    if _takes_images(model):
        images, labels = image_tensors(dataset)
        inputs: tuple[Tensor, ...] = (images,)
    else:
        ids, mask, labels = text_tensors(dataset)
        inputs = (ids, mask)
    key = digest("trunk", model.trunk_digest(), tensors_digest(*inputs))  # type: ignore[attr-defined]
    cache = TensorCache(cache_dir) if cache_dir is not None else None
    entry = cache.load(key) if cache is not None else None
    hit = entry is not None and tuple(entry["states"].shape[:1]) == (len(labels),)
    if hit:
        states = entry["states"]  # type: ignore[index]
    elif _takes_images(model):
        states = compute_image_trunk(model, inputs[0], device=device, batch_size=batch_size)
    else:
        states = compute_trunk(model, *inputs, device=device, batch_size=batch_size)
    if cache is not None and not hit:
        cache.save(key, {"states": states})
    rows = TensorDataset(states, *inputs[1:], labels)
    return TrunkRows(rows, hit, time.perf_counter() - started, key)


def compute_image_trunk(
    model: nn.Module, images: Tensor, *, device: torch.device, batch_size: int
) -> Tensor:
    """Trunk outputs of every image (float32, CPU, in row order)."""
    if len(images) == 0:
        raise TrainingError("trunk cache: no rows")
    was_training = model.training
    model.to(device).eval()
    try:
        with torch.no_grad():
            parts = [
                model.trunk(images[i : i + batch_size].to(device)).float().cpu()  # type: ignore[operator]
                for i in range(0, len(images), batch_size)
            ]
    finally:
        model.train(was_training)
    return torch.cat(parts)


def compute_trunk(
    model: nn.Module, ids: Tensor, mask: Tensor, *, device: torch.device, batch_size: int
) -> Tensor:
    """Trunk outputs of every row (float32, CPU, in row order). Rows are batched by length so
    short snippets are not padded to the longest one; 3-d outputs are padded (with zeros the
    mask hides) to the longest row of the set."""
    lengths = mask.sum(1)
    order = torch.argsort(lengths, descending=True, stable=True)
    width = max(1, int(lengths.max())) if len(lengths) else 1
    out: Tensor | None = None
    was_training = model.training
    model.to(device).eval()
    try:
        with torch.no_grad(), autocast_for(device):
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                part = model.trunk(ids[rows].to(device), mask[rows].to(device)).float().cpu()  # type: ignore[operator]
                if out is None:
                    shape = (
                        (len(ids), width, part.shape[-1])
                        if part.dim() == 3
                        else (len(ids), part.shape[-1])
                    )
                    out = torch.zeros(shape, dtype=torch.float32)
                if part.dim() == 3:
                    out[rows, : part.shape[1]] = part
                else:
                    out[rows] = part
    finally:
        model.train(was_training)
    if out is None:
        raise TrainingError("trunk cache: no rows")
    return out


def rows_through_trunk(
    model: nn.Module, dataset: Dataset, cache_dir: Path | None, train_cfg: TrainConfig
) -> Dataset:
    """What ``train`` should iterate: trunk outputs when the model has a frozen trunk and
    ``train.trunk_cache`` is on, else ``dataset`` itself. ``cache_dir`` is the site's cache
    folder (the trunk entries go to its ``trunk/`` subfolder)."""
    if not (train_cfg.trunk_cache and has_trunk(model)) or len(dataset) == 0:  # type: ignore[arg-type]
        return dataset
    if augmented(dataset):
        return dataset  # the model runs its trunk in every step instead
    folder = None if cache_dir is None else Path(cache_dir) / TRUNK_SUBDIR
    rows = trunk_rows(model, dataset, folder, device=resolve_device(train_cfg.device))
    how = "read from the cache" if rows.hit else "computed"
    log.info("frozen trunk of %d rows %s in %.1f s", len(rows.dataset), how, rows.seconds)
    return rows.dataset
