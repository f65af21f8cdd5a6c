"""ScatterNet: a fixed wavelet-scattering front end, then a linear head trained with DP-SGD.

Tramèr & Boneh (2021, "Differentially Private Learning Needs Better Features") showed that a
linear model on the scattering transform of Oyallon & Mallat beats end-to-end CNNs under DP:
98.7 % on MNIST at epsilon 3, against 98.1 % for the best CNN. The transform is a cascade of
Morlet wavelet convolutions and moduli whose filters are *fixed* (a function of ``J``, ``L`` and
the image size alone): nothing in it is learned, from any site's rows or anyone else's. A site
may therefore compute it once over its own images and keep the outputs (the frozen trunk,
:mod:`fedmodel.training.trunk`), and DP-SGD trains only the head, whose per-sample gradients
are clipped and noised as usual. Under per-site DP, where each of ``k`` sites pays for its own
noise, the better features matter more than centrally: see ``docs/benchmarks.md`` (E1).

Layers: scattering (``1 + J L + L^2 J (J - 1) / 2`` maps per input channel, each ``H / 2^J``
by ``W / 2^J``) -> GroupNorm without affine weights (a per-example normalisation, so it mixes
no two examples) -> flatten -> ``Linear``. The filters are kept out of ``state_dict``: they are
not weights, and sending them in every update would only cost bytes.

The transform is `kymatio <https://www.kymatio.org>`_'s ``Scattering2D`` (the implementation
Tramèr & Boneh used). It is imported from its 2-D module: ``kymatio.torch`` also imports the 3-D
transform, whose filter bank needs ``scipy.special.sph_harm``, gone from SciPy 1.15 on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from importlib.metadata import version

import torch
from torch import Tensor, nn

from fedmodel.models.errors import ModelError

MAX_SCALES = 3


def scattering_channels(j: int, angles: int) -> int:
    """Maps per input channel of a second-order scattering with ``j`` scales, ``angles`` angles."""
    return 1 + j * angles + angles * angles * j * (j - 1) // 2


def _check_geometry(input_shape: Sequence[int], j: int, angles: int) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ModelError(
            f"scatternet expects images (channels, height, width), got {tuple(input_shape)}"
        )
    if not 1 <= j <= MAX_SCALES:
        raise ModelError(f"model.scatter_scales: {j} outside 1..{MAX_SCALES}")
    if angles < 1:
        raise ModelError(f"model.scatter_angles: {angles} must be >= 1")
    channels, height, width = (int(d) for d in input_shape)
    step = 2**j
    if height % step or width % step or height < 2 * step or width < 2 * step:
        raise ModelError(
            f"model.scatter_scales: {j} scales need height and width divisible by {step} and at "
            f"least {2 * step}; the images are {height}x{width}"
        )
    return channels, height, width


class ScatterNet(nn.Module):
    """Scattering (fixed) -> GroupNorm (no weights) -> linear classifier."""

    frozen_layers = 1  # the scattering: computed once per site by the trunk cache
    trunk_input = "image"

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        *,
        scales: int = 2,
        angles: int = 8,
        groups: int = 27,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        channels, height, width = _check_geometry(input_shape, scales, angles)
        self.in_channels = channels
        self.maps = channels * scattering_channels(scales, angles)
        if self.maps % groups:
            raise ModelError(
                f"model.scatter_groups: {groups} does not divide the {self.maps} scattering maps"
            )
        self._config = {"scales": scales, "angles": angles, "height": height, "width": width,
                        "kymatio": version("kymatio")}  # fmt: skip
        # a list, not an attribute: the filters stay out of state_dict and parameters()
        self._transform: list[nn.Module] = [_scattering(scales, angles, height, width)]
        self.norm = nn.GroupNorm(groups, self.maps, affine=False)
        side = (height // 2**scales) * (width // 2**scales)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(self.maps * side, num_classes)
        )

    def forward(self, inputs: Tensor) -> Tensor:
        """Logits from images ``[B, C, H, W]`` or from their scattering ``[B, maps, H', W']``."""
        features = inputs if inputs.shape[1] == self.maps else self.trunk(inputs)
        return self.classifier(self.norm(features))

    def trunk(self, images: Tensor) -> Tensor:
        """The scattering of a batch of images, in the form ``forward`` accepts."""
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ModelError(
                f"scatternet: expected images [B, {self.in_channels}, H, W], got "
                f"{tuple(images.shape)}"
            )
        transform = self._transform[0].to(images.device)
        with torch.no_grad():
            out = transform(images.float().contiguous())
        return out.reshape(out.shape[0], self.maps, out.shape[-2], out.shape[-1])

    def trunk_digest(self) -> str:
        """SHA-256 of what the scattering computes: its scales, angles, image size and the
        kymatio release (the filters are a function of these alone)."""
        return hashlib.sha256(json.dumps(self._config, sort_keys=True).encode()).hexdigest()

    def trunk_state(self) -> dict[str, Tensor]:
        """Nothing: the filters are not in ``state_dict`` (see the module doc)."""
        return {}


def _scattering(scales: int, angles: int, height: int, width: int) -> nn.Module:
    try:
        from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D
    except ImportError as err:  # pragma: no cover - a broken install
        raise ModelError(f"scatternet needs kymatio: {err}") from None
    return ScatteringTorch2D(J=scales, shape=(height, width), L=angles)
