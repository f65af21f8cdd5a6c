"""A small image CNN that trains well under DP-SGD.

The design follows Tramèr & Boneh (2021)'s end-to-end MNIST CNN (itself Papernot et al.'s
tempered-activation net): two strided convolutions (8x8/2 then 4x4/2), each followed by a
stride-1 2x2 max-pool, ``tanh`` activations and a 32-unit hidden layer. ``tanh`` keeps
activations bounded, which keeps per-sample gradient norms small and stable, so less signal is
lost to clipping than with ReLU. GroupNorm (never BatchNorm: its running statistics mix
examples, which breaks per-sample privacy) follows each convolution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from fedmodel.models.errors import ModelError

HIDDEN_UNITS = 32
# (kernel, stride, padding) of the first block and of every later block.
FIRST_CONV = (8, 2, 2)
LATER_CONV = (4, 2, 0)
POOL = (2, 1)  # kernel, stride


def group_count(channels: int, max_groups: int = 8) -> int:
    """GroupNorm groups: as many as possible up to ``max_groups`` that divide ``channels``."""
    return math.gcd(channels, max_groups)


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def feature_size(height: int, width: int, num_blocks: int) -> tuple[int, int]:
    """Spatial size after ``num_blocks`` conv+pool blocks; raises if it collapses below 1x1.

    Computing it up front turns an impossible input shape into a ``ModelError`` at build time
    instead of a shape error deep inside the first forward pass.
    """
    h, w = height, width
    for i in range(num_blocks):
        kernel, stride, padding = FIRST_CONV if i == 0 else LATER_CONV
        h, w = _conv_out(h, kernel, stride, padding), _conv_out(w, kernel, stride, padding)
        h, w = _conv_out(h, POOL[0], POOL[1], 0), _conv_out(w, POOL[0], POOL[1], 0)
        if h < 1 or w < 1:
            raise ModelError(
                f"model.cnn_channels: {num_blocks} conv blocks do not fit a {height}x{width} "
                f"image (feature map vanishes after block {i + 1}); use fewer channels entries"
            )
    return h, w


class CNN(nn.Module):
    """Conv blocks (conv -> GroupNorm -> tanh -> max-pool), then a tanh hidden layer and logits."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (16, 32),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ModelError(
                f"cnn expects images (channels, height, width), got {tuple(input_shape)}"
            )
        if not channels:
            raise ModelError("model.cnn_channels: at least one conv block is required")
        in_channels, height, width = (int(d) for d in input_shape)
        out_h, out_w = feature_size(height, width, len(channels))

        layers: list[nn.Module] = []
        prev = in_channels
        for i, ch in enumerate(channels):
            kernel, stride, padding = FIRST_CONV if i == 0 else LATER_CONV
            layers += [
                nn.Conv2d(prev, ch, kernel_size=kernel, stride=stride, padding=padding),
                nn.GroupNorm(group_count(ch), ch),
                nn.Tanh(),
                nn.MaxPool2d(kernel_size=POOL[0], stride=POOL[1]),
            ]
            prev = ch
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(prev * out_h * out_w, HIDDEN_UNITS),
            nn.Tanh(),
            nn.Dropout(dropout),
            nn.Linear(HIDDEN_UNITS, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
