"""Seconds per local DP-SGD epoch on MiniLM text with physical batches sorted by length.

A text model cuts each batch to its longest row. A large logical batch (DP-SGD wants them:
noise per step is fixed, so more rows per step means more signal per unit of noise) therefore
costs as if every row were as long as the longest of hundreds of rows. Split into physical
batches (``dp.max_physical_batch_size``), the rows of each logical batch now go in order of
length (``fedmodel.training.dp.LengthSortedSplittingSampler``), so each physical batch pads
only to its own longest row. The logical batch, the clipping, the noise and the accounting do
not change (``tests/training/test_dp.py``).

Three ways of running the same epoch, alternated in one process, same rows and seeds: one
physical batch per logical batch; physical batches in Opacus' order (unsorted: the rows are
handed to ``train`` in a wrapper that hides their lengths); physical batches sorted by length.
Trainable: the top encoder layer and the head (``top-k``, k = 1, on the cached 5-layer trunk)
and LoRA adapters on it (``lora-top-k``).

Usage: ``python benchmarks/text_physical_batches.py [--rows 1000] [--batch 256] [--physical 64]``.
Writes ``benchmarks/results/text_physical_batches.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

from _common import RESULTS_DIR, machine, print_table

RESULTS = RESULTS_DIR / "text_physical_batches.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1000, help="a site's snippets")
    p.add_argument("--batch", type=int, default=256, help="logical (expected Poisson) batch")
    p.add_argument("--physical", type=int, default=64, help="dp.max_physical_batch_size")
    p.add_argument("--repeats", type=int, default=3, help="epochs timed per variant (median)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def epoch_seconds(trainable: str, rows: Any, batch: int, physical: int | None) -> float:
    """One DP-SGD epoch of a fresh model over ``rows`` (trunk outputs or a wrapper of them)."""
    from fedmodel.config import DPConfig, ModelConfig, OptimizerConfig, TrainConfig
    from fedmodel.models import build_model
    from fedmodel.training import train

    cfg = ModelConfig(name="minilm", bert_trainable=trainable, bert_top_k=1, bert_normalize=True)
    model = build_model(cfg, (64,), 2, seed=0)
    dp = DPConfig(noise_multiplier=1.0, max_grad_norm=0.5, max_physical_batch_size=physical)
    started = time.perf_counter()
    train(model, rows, train_cfg=TrainConfig(epochs=1, batch_size=batch, seed=0),
          optim_cfg=OptimizerConfig(name="sgd", lr=1.0), dp_cfg=dp, clipping="fast")  # fmt: skip
    return time.perf_counter() - started


def measure(trainable: str, tokens: Any, args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    from torch.utils.data import ConcatDataset

    from fedmodel.config import ModelConfig, TrainConfig
    from fedmodel.models import build_model
    from fedmodel.training.trunk import rows_through_trunk

    cfg = ModelConfig(name="minilm", bert_trainable=trainable, bert_top_k=1, bert_normalize=True)
    with tempfile.TemporaryDirectory(prefix="trunk-") as tmp:
        rows = rows_through_trunk(build_model(cfg, (64,), 2, seed=0), tokens, Path(tmp),
                                  TrainConfig())  # fmt: skip
    hidden = ConcatDataset([rows])  # the same rows, lengths not visible: Opacus' order
    variants = {
        "one_physical_batch": (rows, None),
        "physical_unsorted": (hidden, args.physical),
        "physical_sorted": (rows, args.physical),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, (data, physical) in variants.items():
            times[name].append(epoch_seconds(trainable, data, args.batch, physical))
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    return {
        "trainable": f"{trainable} (k=1)",
        **{f"{name}_s": round(s, 3) for name, s in medians.items()},
        "all_s": {name: [round(t, 3) for t in ts] for name, ts in times.items()},
        "speedup_sorted_vs_one_batch": round(
            medians["one_physical_batch"] / medians["physical_sorted"], 2
        ),
        "speedup_sorted_vs_unsorted": round(
            medians["physical_unsorted"] / medians["physical_sorted"], 2
        ),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    from fedmodel.config import DataConfig
    from fedmodel.data import load_dataset
    from fedmodel.io import atomic_write_json

    torch.set_num_threads(args.threads)
    tokens = load_dataset(DataConfig(dataset="rotten-tomatoes", train_limit=args.rows)).train
    lengths = tokens.tensors[1].sum(1).float()
    load_before = os.getloadavg()
    results = [measure(t, tokens, args) for t in ("top-k", "lora-top-k")]
    out = {
        "results": results,
        "rows": len(tokens),
        "tokens_per_row": {"mean": round(float(lengths.mean()), 1), "max": int(lengths.max())},
        "batch": args.batch,
        "max_physical_batch_size": args.physical,
        "threads": args.threads,
        "repeats": args.repeats,
        "epoch": "DP-SGD, fast clipping, noise 1.0, clip 0.5, Poisson sampling, cached trunk",
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "machine": machine(),
    }
    atomic_write_json(args.out, out)
    print_table(
        ["trainable", "one batch s", "unsorted s", "sorted s", "vs one batch", "vs unsorted"],
        [[r["trainable"], r["one_physical_batch_s"], r["physical_unsorted_s"],
          r["physical_sorted_s"], f"{r['speedup_sorted_vs_one_batch']}x",
          f"{r['speedup_sorted_vs_unsorted']}x"] for r in results],
    )  # fmt: skip
    print(f"tokens per row {out['tokens_per_row']}; load average before {load_before}, "
          f"after {out['load_average']['after']}; wrote {args.out}")  # fmt: skip


if __name__ == "__main__":
    main()
