"""Seconds per local DP-SGD round on MiniLM text, with and without the cached frozen trunk.

One site's round as ``clients/train_round.py`` runs it: one epoch of DP-SGD (fast clipping,
noise 1.0, Poisson batches of 64) over the site's Rotten Tomatoes snippets, on the default
6-layer mean-pooled MiniLM, for two trainable choices: ``head`` (the whole encoder frozen) and
``top-k`` with k = 1 (five frozen layers). Without the cache every step runs the frozen layers
again; with it, the first round computes them once (reported separately) and every later round
reads them from the site's cache and trains the top only. Same model, same rows, same seeds,
measured in one process, alternating the two paths so that load changes hit both alike.

The ceiling. An uncached round is the frozen layers' forward pass plus the top's training, so
no cache can make it faster than ``1 + trunk / top``, where ``trunk`` is one pass of the frozen
layers over the rows and ``top`` the cheapest possible training of what is left: the same
epoch *without* DP (no clipping, no noise). ``ceiling`` reports that bound for each choice,
measured in the same run. For top-1 on a 6-layer encoder it is about 2-3x: training a layer
(forward, backward, weight gradients) costs about three forward passes of it, against five
frozen layers' forward, so a 5x goal for top-1 cannot be met by any cache (see
docs/benchmarks.md).

Usage: ``python benchmarks/text_trunk_cache.py [--rows 1000] [--repeats 3] [--threads 1]``.
Writes ``benchmarks/results/text_trunk_cache.json`` (``speedup_head``, ``speedup_top1``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import RESULTS_DIR, machine, print_table

RESULTS = RESULTS_DIR / "text_trunk_cache.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1000, help="a site's snippets (default: 5 sites)")
    p.add_argument("--repeats", type=int, default=3, help="rounds timed per path (median kept)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (a virtual site: 1)")
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def trunk_seconds(model: Any, rows: Any, cfgs: dict[str, Any]) -> float:
    """One pass of the frozen layers over the rows, stored in a fresh cache."""
    from fedmodel.training.trunk import rows_through_trunk

    with tempfile.TemporaryDirectory(prefix="trunk-only-") as tmp:
        started = time.perf_counter()
        rows_through_trunk(model, rows, Path(tmp), cfgs["train_cfg"])
        return time.perf_counter() - started


def round_seconds(model: Any, rows: Any, cache: Path | None, cfgs: dict[str, Any]) -> float:
    """One local round: the rows through the trunk cache (when ``cache``), then DP-SGD."""
    from fedmodel.training import train
    from fedmodel.training.trunk import rows_through_trunk

    started = time.perf_counter()
    data = rows if cache is None else rows_through_trunk(model, rows, cache, cfgs["train_cfg"])
    train(model, data, **cfgs)
    return time.perf_counter() - started


def measure(trainable: str, rows: Any, repeats: int) -> dict[str, Any]:
    from fedmodel.config import DPConfig, ModelConfig, OptimizerConfig, TrainConfig
    from fedmodel.models import build_model

    cfg = ModelConfig(name="minilm", bert_trainable=trainable, bert_top_k=1)
    model = build_model(cfg, (rows.tensors[0].shape[1],), 2, seed=0)
    cfgs = {
        "train_cfg": TrainConfig(epochs=1, batch_size=64, seed=0),
        "optim_cfg": OptimizerConfig(name="sgd", lr=0.5),
        "dp_cfg": DPConfig(noise_multiplier=1.0, max_grad_norm=1.0),
    }
    no_dp = {**cfgs, "dp_cfg": DPConfig(enabled=False)}
    with tempfile.TemporaryDirectory(prefix="trunk-cache-") as tmp:
        first = round_seconds(model, rows, Path(tmp), cfgs)  # computes and stores the trunk
        plain, cached, trunk, top_no_dp = [], [], [], []
        for _ in range(repeats):
            plain.append(round_seconds(model, rows, None, cfgs))
            cached.append(round_seconds(model, rows, Path(tmp), cfgs))
            trunk.append(trunk_seconds(model, rows, cfgs))
            top_no_dp.append(round_seconds(model, rows, Path(tmp), no_dp))
    trunk_s, top_s = statistics.median(trunk), statistics.median(top_no_dp)
    return {
        "trainable": trainable if trainable == "head" else "top-1",
        "frozen_layers": model.frozen_layers,
        "uncached_s": round(statistics.median(plain), 3),
        "cached_s": round(statistics.median(cached), 3),
        "first_cached_round_s": round(first, 3),
        "uncached_all_s": [round(x, 3) for x in plain],
        "cached_all_s": [round(x, 3) for x in cached],
        "speedup": round(statistics.median(plain) / statistics.median(cached), 2),
        "trunk_s": round(trunk_s, 3),
        "cached_no_dp_s": round(top_s, 3),
        "ceiling": round(1 + trunk_s / top_s, 2),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    from fedmodel.config import DataConfig
    from fedmodel.data import load_dataset
    from fedmodel.io import atomic_write_json

    torch.set_num_threads(args.threads)
    rows = load_dataset(DataConfig(dataset="rotten-tomatoes", train_limit=args.rows)).train
    load_before = os.getloadavg()
    results = [measure(t, rows, args.repeats) for t in ("head", "top-k")]
    head, top1 = results
    out = {
        "speedup_head": head["speedup"],
        "speedup_top1": top1["speedup"],
        "ceiling_head": head["ceiling"],
        "ceiling_top1": top1["ceiling"],
        "goal_speedup": 5.0,
        "rows": len(rows),
        "threads": args.threads,
        "repeats": args.repeats,
        "model": "all-MiniLM-L6-v2, 6 layers, mean-pooled, max_length 64",
        "round": "1 epoch DP-SGD, fast clipping, noise 1.0, clip 1.0, Poisson batch 64",
        "details": results,
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "machine": machine(),
    }
    atomic_write_json(args.out, out)
    print_table(
        ["trainable", "uncached s/round", "cached s/round", "trunk s", "cached no-DP s",
         "speedup", "ceiling"],
        [[r["trainable"], r["uncached_s"], r["cached_s"], r["trunk_s"], r["cached_no_dp_s"],
          f"{r['speedup']}x", f"{r['ceiling']}x"] for r in results],
    )  # fmt: skip
    print(f"load average before {load_before}, after {out['load_average']['after']}; "
          f"wrote {args.out}")  # fmt: skip


if __name__ == "__main__":
    main()
