"""Batch prediction with a loaded model: labels and class probabilities."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from fedmodel.device import autocast_for
from fedmodel.training.errors import TrainingError


@contextmanager
def eval_mode(model: nn.Module, device: str | torch.device) -> Iterator[nn.Module]:
    """Model on ``device`` in eval mode (no dropout, no autograd); previous mode restored."""
    was_training = model.training
    model.to(device).eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def predict(
    model: nn.Module,
    inputs: Tensor | Sequence[Tensor],
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> tuple[Tensor, Tensor]:
    """``(labels [N] int64, probabilities [N, C] float32)`` for unlabelled ``inputs``.

    ``inputs`` is one tensor (images, tabular rows) or a sequence of tensors passed to the model
    positionally (text: ``(input_ids, attention_mask)``), each with the examples on dim 0.
    Runs in eval mode (no dropout) and restores the model's previous mode.
    """
    tensors = [inputs] if isinstance(inputs, Tensor) else list(inputs)
    if not tensors:
        raise TrainingError("predict: no inputs given")
    n = tensors[0].shape[0]
    if any(t.shape[0] != n for t in tensors):
        raise TrainingError("predict: all input tensors must have the same number of rows")
    probs: list[Tensor] = []
    with eval_mode(model, device):
        for start in range(0, n, batch_size):
            batch = [t[start : start + batch_size].to(device) for t in tensors]
            with autocast_for(torch.device(device)):
                logits = model(*batch).float()
            probs.append(torch.softmax(logits, dim=1).cpu())
    if not probs:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0, 0)
    probabilities = torch.cat(probs)
    return probabilities.argmax(dim=1), probabilities
