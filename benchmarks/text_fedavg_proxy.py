"""In-process FedAvg proxy for E3 settings: a quick look at a text setting before a Flower run.

The 5 sites' selection rows (``federated_accuracy.text_validation``: never the validation or
test rows) go through the model's cached trunk; each round every site trains a copy of the
global model with DP-SGD (fast clipping, noise calibrated for ``--eps`` over all rounds from
its own sampling rate, as a client calibrates it), the trainable weights are averaged
uniformly, and the global model is scored on the validation rows. No Flower, no ledger, no
keys: a proxy that says whether a setting learns at all, not a result. Every run of it looks
at the validation rows and counts as a selection look (``docs/benchmarks.md`` E3).

Usage: ``python benchmarks/text_fedavg_proxy.py --trainable lora-top-k --alpha 4`` (see
``--help``); prints one line per round and a JSON summary. The trunk outputs are cached under
``--cache`` (5-layer trunk for top-1 choices: about 4 minutes on 2 cores the first time).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from federated_accuracy import TEXT_BASE, text_validation

SITES = 5
DELTA = 1e-5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trainable", default="lora-top-k", help="model.bert_trainable")
    p.add_argument("--lr", type=float, default=2.0)
    p.add_argument("--clip", type=float, default=0.5)
    p.add_argument("--batch", type=int, default=512, help="expected Poisson batch")
    p.add_argument("--epochs", type=int, default=2, help="local epochs per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--rank", type=int, default=8, help="LoRA rank")
    p.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha (scale alpha / rank)")
    p.add_argument("--eps", type=float, default=8.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", type=Path, default=Path("/tmp/fedmodel-text-proxy-cache"))
    return p.parse_args(argv)


def scenario(args: argparse.Namespace) -> tuple[Any, Any]:
    """(the scenario on the selection rows, the validation rows)."""
    from fedmodel.scenarios import apply_overrides, load_scenario

    overrides = {
        **TEXT_BASE,
        "model.bert_normalize": True,
        "model.bert_trainable": args.trainable,
        "model.bert_top_k": 1,
        "model.bert_lora_rank": args.rank,
        "model.bert_lora_alpha": args.alpha,
        "optimizer.lr": args.lr,
        "dp.max_grad_norm": args.clip,
        "train.batch_size": args.batch,
        "train.epochs": args.epochs,
        "federation.rounds": args.rounds,
        "dp.target_epsilon": args.eps,
    }
    base = apply_overrides(load_scenario("text-minilm"), overrides, "proxy",
                           clear=("data.train_limit", "data.test_limit"))  # fmt: skip
    fit_rows, validation = text_validation(base)
    return apply_overrides(base, {"data.train_limit": fit_rows}, "proxy fit rows"), validation


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from fedmodel.config import DPConfig
    from fedmodel.data.local import client_train_set, model_io
    from fedmodel.models import build_model
    from fedmodel.privacy.accountant import calibrate_noise, sampling_plan
    from fedmodel.training import evaluate, train
    from fedmodel.training.trunk import rows_through_trunk

    torch.set_num_threads(args.threads)
    cfg, validation = scenario(args)
    shape, classes = model_io(cfg)
    global_model = build_model(cfg.model, shape, classes, seed=cfg.train.seed)
    started = time.perf_counter()
    sites = [rows_through_trunk(global_model, client_train_set(cfg, pid), args.cache, cfg.train)
             for pid in range(SITES)]  # fmt: skip
    val = rows_through_trunk(global_model, validation, args.cache, cfg.train)
    trainable = [n for n, p in global_model.named_parameters() if p.requires_grad]
    noise = [calibrate_noise(args.eps, DELTA, *_plan(len(s), args, sampling_plan)) for s in sites]
    history: list[list[Any]] = [[] for _ in sites]
    curve = []
    for rnd in range(1, args.rounds + 1):
        states = []
        for i, rows in enumerate(sites):
            local = build_model(cfg.model, shape, classes, seed=cfg.train.seed)
            local.load_state_dict(global_model.state_dict())
            dp = DPConfig(noise_multiplier=noise[i], max_grad_norm=args.clip, delta=DELTA)
            result = train(local, rows, train_cfg=cfg.train, optim_cfg=cfg.optimizer, dp_cfg=dp,
                           prior_history=history[i], seed=1000 * i + 7,  # a noise stream each
                           clipping="fast")  # fmt: skip
            history[i] += result.history
            states.append({n: result.state_dict[n] for n in trainable})
        mean = {n: torch.stack([s[n] for s in states]).mean(0) for n in trainable}
        global_model.load_state_dict(mean, strict=False)
        curve.append(float(evaluate(global_model, val).accuracy))
        print(f"round {rnd}: validation {curve[-1]:.4f}, epsilon {result.epsilon:.3f}, "
              f"{time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip
    print(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "noise": noise,
                      "validation_curve": curve}))  # fmt: skip


def _plan(rows: int, args: argparse.Namespace, sampling_plan: Any) -> tuple[float, int]:
    """(sample rate, steps over all rounds) of a site with ``rows`` rows."""
    rate, steps = sampling_plan(rows, args.batch, args.epochs)
    return rate, steps * args.rounds


if __name__ == "__main__":
    main()
