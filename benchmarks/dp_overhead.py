"""Seconds per DP-SGD training step relative to the same step without DP.

One step = forward + backward + optimizer step (clipping and noise included for DP). Every
variant is measured in the same process, interleaved round-robin (the order rotates each round)
so that load from other processes on a shared machine hits all variants alike; medians are
reported. Variants:

* ``per-sample``: Opacus hooks (per-sample gradients materialised).
* ``ghost-stock``: Opacus ghost clipping as shipped (no Conv2d norm sampler; CNN only).
* ``ghost``: Opacus ghost clipping with fedmodel's Conv2d norm sampler registered.
* ``fast``: fedmodel's book-keeping clipping (one backward pass) + Opacus noise/accounting.

Usage: ``python benchmarks/dp_overhead.py [--rounds 15] [--threads 2] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import opacus
import torch
from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import (
    GradSampleHooksFastGradientClipping,
)
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from fedmodel.config import DPConfig, ModelConfig, OptimizerConfig
from fedmodel.io import atomic_write_json
from fedmodel.models import build_model
from fedmodel.training.dp import make_private
from fedmodel.training.optim import build_optimizer

RESULTS = Path(__file__).parent / "results" / "dp_overhead.json"
Step = Callable[[], None]


def plain_step(model: nn.Module, optim_cfg: OptimizerConfig, inputs, labels) -> Step:
    optimizer = build_optimizer(model, optim_cfg)

    def step() -> None:
        loss = F.cross_entropy(model(*inputs), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def dp_step(
    model: nn.Module, optim_cfg: OptimizerConfig, inputs, labels, mode: str, stock: bool = False
) -> Step:
    """A DP step through fedmodel's ``make_private``; fixed batch (no Poisson) for timing."""
    optimizer = build_optimizer(model, optim_cfg)
    loader = DataLoader(TensorDataset(*inputs, labels), batch_size=len(labels))
    dp_cfg = DPConfig(noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=False)
    clipping = "ghost" if mode.startswith("ghost") else mode
    session = make_private(model, optimizer, loader, dp_cfg, epochs=1, clipping=clipping)
    if stock:  # Opacus as shipped: hide fedmodel's Conv2d norm sampler from this module only
        table = GradSampleHooksFastGradientClipping.NORM_SAMPLERS
        session.module.NORM_SAMPLERS = {k: v for k, v in table.items() if k is not nn.Conv2d}

    def step() -> None:
        session.backward(session.module(*inputs), labels)
        session.step()

    return step


def time_variants(
    variants: dict[str, Step],
    rounds: int,
    steps_per_round: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Median seconds per step; round-robin with a rotating order, after a warm-up."""
    for step in variants.values():
        for _ in range(2):
            step()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            for _ in range(steps_per_round):
                t0 = clock()
                variants[name]()
                samples[name].append(clock() - t0)
    return {name: statistics.median(ts) for name, ts in samples.items()}


def cnn_variants(batch: int) -> tuple[dict[str, Step], dict]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    cfg = ModelConfig(name="cnn")
    optim_cfg = OptimizerConfig(name="sgd", lr=0.1, momentum=0.9)

    def fresh() -> nn.Module:
        return build_model(cfg, (1, 28, 28), 10, seed=0)

    variants = {
        "plain": plain_step(fresh(), optim_cfg, (x,), y),
        "per-sample": dp_step(fresh(), optim_cfg, (x,), y, "per-sample"),
        "ghost-stock": dp_step(fresh(), optim_cfg, (x,), y, "ghost-stock", stock=True),
        "ghost": dp_step(fresh(), optim_cfg, (x,), y, "ghost"),
        "fast": dp_step(fresh(), optim_cfg, (x,), y, "fast"),
    }
    return variants, {"batch": batch, "input": [1, 28, 28], "optimizer": "sgd+momentum"}


def minilm_variants(batch: int, seq: int) -> tuple[dict[str, Step], dict]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    y = torch.randint(0, 2, (batch,), generator=g)
    cfg = ModelConfig(name="minilm", bert_layers=2, bert_trainable="all-but-embeddings")
    optim_cfg = OptimizerConfig(name="adamw", lr=5e-5)

    def fresh() -> nn.Module:
        return build_model(cfg, (seq,), 2, seed=0)

    variants = {
        "plain": plain_step(fresh(), optim_cfg, (ids, mask), y),
        "per-sample": dp_step(fresh(), optim_cfg, (ids, mask), y, "per-sample"),
        "ghost": dp_step(fresh(), optim_cfg, (ids, mask), y, "ghost"),
        "fast": dp_step(fresh(), optim_cfg, (ids, mask), y, "fast"),
    }
    meta = {
        "batch": batch,
        "seq": seq,
        "layers": 2,
        "trainable": "all-but-embeddings (embeddings frozen)",
        "optimizer": "adamw",
    }
    return variants, meta


def summarise(medians: dict[str, float], meta: dict, best: str = "fast") -> dict:
    plain = medians["plain"]
    modes = {
        name: {"dp_s": round(s, 6), "ratio": round(s / plain, 3)}
        for name, s in medians.items()
        if name != "plain"
    }
    return {
        "ratio": modes[best]["ratio"],
        "plain_s": round(plain, 6),
        "dp_s": modes[best]["dp_s"],
        "mode": best,
        "modes": modes,
        **meta,
    }


def print_table(results: dict[str, dict]) -> None:
    print(f"{'model':8s} {'variant':12s} {'wall s/step':>12s} {'x plain':>8s} {'cpu x plain':>12s}")
    for model, res in results.items():
        cpu = res.get("cpu_time_1_thread", {}).get("modes", {})
        print(f"{model:8s} {'plain':12s} {res['plain_s']:12.4f} {1.0:8.2f} {1.0:12.2f}")
        for name, m in res["modes"].items():
            cpu_ratio = f"{cpu[name]['ratio']:12.2f}" if name in cpu else f"{'-':>12s}"
            print(f"{model:8s} {name:12s} {m['dp_s']:12.4f} {m['ratio']:8.2f} {cpu_ratio}")


def measure(
    variants: dict[str, Step], meta: dict, rounds: int, steps_per_round: int, cpu_rounds: int
) -> dict:
    """Wall-clock medians at the configured threads, plus process CPU time on one thread.

    On a shared machine wall-clock ratios move with other processes' load; the CPU time of a
    single-threaded step counts only this process's work, so it cross-checks the ratio.
    """
    threads = torch.get_num_threads()
    result = summarise(time_variants(variants, rounds, steps_per_round), meta)
    if cpu_rounds > 0:
        torch.set_num_threads(1)
        medians = time_variants(variants, cpu_rounds, steps_per_round, clock=time.process_time)
        result["cpu_time_1_thread"] = summarise(medians, {})
        torch.set_num_threads(threads)
    return result


def gemm_gflops(size: int = 2048, repeats: int = 10) -> float:
    """Dense float32 matmul throughput at the configured threads: a fingerprint of the CPU.

    The ratios depend on the machine: a CPU with slow matrix units makes the plain step (mostly
    matmuls and convolutions) slower while DP's fixed per-operation costs stay, so the same
    code measures a lower ratio there. The JSON keeps this number so runs on different
    machines can be told apart.
    """
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=g), torch.randn(size, size, generator=g)
    for _ in range(2):
        a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--cpu-rounds", type=int, default=6, help="0 skips the CPU-time check")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-minilm", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Full backward hook is firing")

    load_before = os.getloadavg()
    results: dict[str, dict] = {}
    variants, meta = cnn_variants(batch=64)
    results["cnn"] = measure(variants, meta, args.rounds, 5, args.cpu_rounds)
    if not args.skip_minilm:
        variants, meta = minilm_variants(batch=32, seq=64)
        rounds = max(3, args.rounds // 2)
        results["minilm"] = measure(variants, meta, rounds, 1, max(0, args.cpu_rounds // 2))
    print_table(results)
    results["environment"] = {
        "torch": torch.__version__,
        "opacus": opacus.__version__,
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "gemm_gflops": round(gemm_gflops(), 1),
        "rounds": args.rounds,
        "cpu_rounds": args.cpu_rounds,
        "loadavg_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "statistic": "median seconds per step, variants interleaved round-robin; "
        "cpu_time_1_thread: median process CPU seconds per step on one thread",
    }
    atomic_write_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
