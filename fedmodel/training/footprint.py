"""How big and how fast a model is on CPU: weights, bytes on disk, milliseconds per batch.

What a site deploying the model on modest hardware needs to know. Speed is the median of
repeated forward passes of one batch, after warm-up, with a fixed number of CPU threads (one by
default: a shared machine's other work then disturbs the figure least, and two models compared
in one process run under the same conditions); the caller records the machine's load.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Footprint:
    """One model's size and speed, as the report and the benchmark show them."""

    parameters: int
    bytes_on_disk: int
    ms_per_batch: float
    batch_size: int
    threads: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_parameters(model: nn.Module) -> int:
    """Every weight of the model, trainable or frozen (buffers such as masks excluded)."""
    return sum(p.numel() for p in model.parameters())


def bytes_on_disk(model_dir: Path) -> int:
    """Size of the exported weights file (the sidecar is a few kB of JSON either way)."""
    from fedmodel.training.export import WEIGHTS_NAME

    return (Path(model_dir) / WEIGHTS_NAME).stat().st_size


def weights_bytes(model: nn.Module) -> int:
    """Bytes of the safetensors file ``export_model`` writes for ``model`` (same bytes)."""
    from safetensors.torch import save

    return len(save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}))


@contextmanager
def cpu_threads(threads: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def ms_per_batch(
    model: nn.Module,
    inputs: Sequence[Tensor],
    *,
    batch_size: int = 256,
    repeats: int = 15,
    warmup: int = 3,
    threads: int = 1,
) -> float:
    """Median wall-clock milliseconds of one forward pass over a ``batch_size`` batch on CPU."""
    batch = [t[:batch_size].cpu() for t in inputs]
    model = model.cpu().eval()
    times: list[float] = []
    with cpu_threads(threads), torch.no_grad():
        for i in range(warmup + repeats):
            start = time.perf_counter()
            model(*batch)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def footprint(
    model: nn.Module,
    inputs: Sequence[Tensor],
    *,
    size_bytes: int | None = None,
    batch_size: int = 256,
    threads: int = 1,
) -> Footprint:
    """Size and speed of a float ``model``; ``size_bytes``: its weights file, if exported."""
    return Footprint(
        parameters=count_parameters(model),
        bytes_on_disk=weights_bytes(model) if size_bytes is None else size_bytes,
        ms_per_batch=ms_per_batch(model, inputs, batch_size=batch_size, threads=threads),
        batch_size=min(batch_size, int(inputs[0].shape[0])),
        threads=threads,
    )
