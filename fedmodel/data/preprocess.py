"""Image preprocessing: fixed normalisation constants and on-the-fly shifts.

Nothing here learns a statistic of anyone's rows. Tables are encoded by their declared task
(``fedmodel.data.site``: declared ranges and categories; only ``site-median`` columns are fitted,
at each site on its own training rows), packaged datasets and a site's own files alike.
"""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
"""Published MNIST training-set pixel statistics: fixed constants, so nothing is fitted."""


def normalise_images(images: torch.Tensor) -> torch.Tensor:
    """Map [0, 1] pixels to zero mean / unit variance with the fixed MNIST constants."""
    return (images - MNIST_MEAN) / MNIST_STD


def normalised_background() -> float:
    """The value a black (0) pixel takes after :func:`normalise_images`: fill for shifts."""
    return (0.0 - MNIST_MEAN) / MNIST_STD


def _shift_span(shift: int, size: int) -> tuple[slice, slice]:
    """(destination, source) slices that move a 1-D axis of ``size`` by ``shift`` pixels."""
    if shift >= 0:
        return slice(shift, size), slice(0, size - shift)
    return slice(0, size + shift), slice(-shift, size)


def shift_image(image: torch.Tensor, dy: int, dx: int, fill: float) -> torch.Tensor:
    """Translate a (C, H, W) image by (dy, dx) pixels; uncovered pixels take ``fill``."""
    _, height, width = image.shape
    out = torch.full_like(image, fill)
    dst_y, src_y = _shift_span(dy, height)
    dst_x, src_x = _shift_span(dx, width)
    out[:, dst_y, dst_x] = image[:, src_y, src_x]
    return out


class ShiftAugmented(TensorDataset):
    """Training images randomly shifted by up to ``max_shift`` pixels on every access.

    A ``TensorDataset`` subclass so it keeps the ``(x, y)`` contract and the ``.tensors``
    attribute (labels stay readable without augmenting). The shifts come from a private seeded
    generator: runs are reproducible for a given access order, and no global RNG is touched.
    Only ever wrap training rows; test rows must be scored unaltered.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        max_shift: int = 2,
        fill: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__(images, labels)
        self.max_shift = max_shift
        self.fill = fill
        self._generator = torch.Generator().manual_seed(seed)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = super().__getitem__(index)
        dy, dx = torch.randint(
            -self.max_shift, self.max_shift + 1, (2,), generator=self._generator
        ).tolist()
        return shift_image(image, dy, dx, self.fill), label
