"""Where tensors live: CUDA when present (or asked for), CPU otherwise."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from fedmodel.errors import FedmodelError


class DeviceError(FedmodelError):
    """The requested device cannot be used on this machine."""


def resolve_device(choice: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is a clear error, not a crash."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise DeviceError("train.device: cuda requested but no CUDA device is available")
    if choice not in {"cpu", "cuda"}:
        raise DeviceError(f"train.device: unknown device {choice!r} (auto, cpu or cuda)")
    return torch.device(choice)


def set_threads(threads: int | None) -> None:
    """Cap intra-op threads; many simulated clients on few cores must not oversubscribe."""
    if threads is not None:
        torch.set_num_threads(threads)


def autocast_for(device: torch.device) -> AbstractContextManager:
    """bf16 autocast on CUDA (tensor cores, half the activation memory); nothing on CPU, which
    stays float32 (CPU bf16 matmuls are slower here and change results). Per-sample clipping
    casts to float32 itself (``fedmodel.training.clipping``), so the clipping bound holds."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def manual_seed(seed: int) -> None:
    """``torch.manual_seed``, without its cost on a machine with no accelerator.

    There torch still queues a lazy seeding call for each accelerator backend, each with a
    formatted stack trace: about a sixth of a small virtual site's CPU time per round (three
    seeds a round). The CPU generator is seeded exactly as ``torch.manual_seed`` seeds it.
    """
    if torch.accelerator.is_available():
        torch.manual_seed(seed)
    else:
        torch.default_generator.manual_seed(int(seed))
