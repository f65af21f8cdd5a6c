"""A multi-layer perceptron for tabular rows."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fedmodel.models.errors import ModelError


class MLP(nn.Module):
    """Linear -> ReLU -> Dropout per hidden size, then a linear head producing logits.

    No normalisation layers: tabular inputs arrive scaled by their declared ranges
    (``fedmodel.data.site``), and BatchNorm would break per-sample DP anyway.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden_sizes: Sequence[int] = (64, 32),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(input_shape) != 1:
            raise ModelError(
                f"mlp expects feature vectors (features,), got input_shape {tuple(input_shape)}"
            )
        if any(h < 1 for h in hidden_sizes):
            raise ModelError(f"model.hidden_sizes: sizes must be >= 1, got {list(hidden_sizes)}")
        layers: list[nn.Module] = []
        prev = int(input_shape[0])
        for size in hidden_sizes:
            layers += [nn.Linear(prev, size), nn.ReLU(), nn.Dropout(dropout)]
            prev = size
        layers.append(nn.Linear(prev, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
