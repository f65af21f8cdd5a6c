"""Bytes per round and final accuracy with no update compression, int8 and int4 (DP on).

Real Flower simulations, 10 clients, DP-SGD at the scenario's epsilon, signed (unsealed)
updates: ``mnist-cnn`` (the whole CNN trains) and ``text-minilm`` with its top encoder layer
trainable (``bert_trainable = "top-k"``, k = 1; rows limited so it finishes on 2 cores). Each
(model, seed) runs the three codings back to back, so load changes hit all three alike; the
seed is ``train.seed`` (the initial model); every run's DP noise is a fresh draw (each spend's
seed comes from the site's key and the request), so accuracies are compared as means over seeds.

Bytes are what the server received: each accepted reply envelope's size (``bytes_sent`` in
metrics.jsonl), summed over the sites of a round and averaged over rounds. MiniLM's plain reply
also carries its frozen 5-layer trunk (~86 MB) every round, which a coded reply leaves out
(an all-zero update tensor is not sent), so for MiniLM the ratio is also given against the plain
reply minus the frozen tensors' bytes (``bytes_ratio_trainable``); the headline uses that one.

Usage: ``python benchmarks/compression.py [--models mnist,minilm] [--seeds 2]``. Writes
``benchmarks/results/compression.json``: the headline ``int8_bytes_ratio``,
``int8_accuracy_drop``, ``int4_*`` (worst over models: smallest ratio, largest drop, in points),
per-model details and the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

from _common import RESULTS_DIR, fresh_run_dir, machine, print_table, quiet_env, run_summary

RESULTS = RESULTS_DIR / "compression.json"
CODINGS = ("none", "int8", "int4")
GOAL = {"int8_bytes_ratio": 3.5, "int8_accuracy_drop": 0.5}
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "mnist-cnn": ("mnist-cnn", {}),
    "minilm-top1": (
        "text-minilm",
        {
            "model.bert_trainable": "top-k",
            "model.bert_top_k": 1,
            "data.train_limit": 1000,
            "data.test_limit": 500,
            "train.epochs": 2,
            "train.batch_size": 64,
            "optimizer.lr": 0.5,
            "federation.rounds": 2,
            "strategy.min_train_nodes": 10,
        },
    ),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--models", default=",".join(MODELS), help="comma-separated: " + ",".join(MODELS)
    )
    p.add_argument("--seeds", type=int, default=2, help="train.seed 0..N-1 per model")
    p.add_argument("--first-seed", type=int, default=0, help=">0: add seeds to earlier runs")
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--paired-repeats", type=int, default=5, help="coding seeds, paired check")
    p.add_argument("--paired-only", action="store_true", help="redo the paired check only")
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def scenario(model: str, coding: str, seed: int, clients: int):
    from fedmodel.scenarios import apply_overrides, load_scenario

    name, overrides = MODELS[model]
    return apply_overrides(
        load_scenario(name),
        {
            "federation.num_clients": clients,
            **overrides,
            "train.seed": seed,
            "compression.method": coding,
        },
        "benchmark",
    )


def one_run(model: str, coding: str, seed: int, clients: int, cache: Path) -> dict[str, Any]:
    """One simulation; the sites' and the server's frozen-trunk caches are shared across runs
    (the trunk outputs of the same rows are the same in every run)."""
    from fedmodel.node_config import NODE_FILE
    from fedmodel.sim_nodes import prepare_sim_nodes
    from fedmodel.simulation import simulate
    from server.federation import ServerSettings

    cfg = scenario(model, coding, seed, clients)
    run_dir = fresh_run_dir(f"compression-{model}-{coding}")
    nodes = run_dir / "nodes"
    for folder in prepare_sim_nodes(nodes, cfg):
        node_file = folder / NODE_FILE
        text = node_file.read_text()
        assert 'cache_dir = "cache"' in text, node_file
        shared = cache / folder.name
        node_file.write_text(text.replace('cache_dir = "cache"', f'cache_dir = "{shared}"'))
    started = time.perf_counter()
    settings = ServerSettings(scenario=cfg, run_dir=run_dir, sim_nodes_dir=nodes, cache_dir=cache)
    simulate(settings)
    summary = run_summary(run_dir)
    per_round = round_bytes(run_dir)
    return {
        "coding": coding,
        "seed": seed,
        "accuracy": summary["accuracy"],
        "curve": summary["curve"],
        "epsilon": summary["epsilon"],
        "client_replies": summary["client_replies"],
        "bytes_per_round": statistics.mean(per_round) if per_round else None,
        "bytes_by_round": per_round,
        "wall_s": round(time.perf_counter() - started, 1),
        "load_1m_after": round(os.getloadavg()[0], 2),
        "run_dir": str(run_dir),
    }


def paired_last_round(model: str, run_dir: Path, cache: Path, repeats: int) -> dict[str, Any]:
    """The same DP noise draw with and without coding: the final model of a ``none`` run
    against its previous checkpoint plus its last aggregate update coded (``repeats`` coding
    seeds each). Conservative: one coding of the ten sites' mean, where a coded run averages
    ten independent codings, whose errors partly cancel."""
    import torch

    from fedmodel.compression import round_trip
    from fedmodel.config import CompressionConfig
    from fedmodel.data.local import coordinator_splits, model_io
    from fedmodel.models import build_model
    from fedmodel.training.checkpoint import load_weights
    from fedmodel.training.loop import evaluate
    from fedmodel.training.trunk import load_global_state, rows_through_trunk

    cfg = scenario(model, "none", 0, 10)
    shape, classes = model_io(cfg)
    net = build_model(cfg.model, shape, classes, seed=0)
    test = coordinator_splits(cfg, oracle=False).test
    rows = rows_through_trunk(net, test, cache, cfg.train)
    checkpoints = sorted((run_dir / "checkpoints").glob("round-*.safetensors"))
    before, _ = load_weights(checkpoints[-2])
    final, _ = load_weights(checkpoints[-1])

    def scores(state: dict[str, torch.Tensor]) -> tuple[float, float | None]:
        load_global_state(net, state)
        result = evaluate(net, rows, batch_size=cfg.train.eval_batch_size)
        return 100 * result.accuracy, result.auroc  # AUROC: binary tasks only

    plain, plain_auroc = scores(final)
    out: dict[str, Any] = {"plain_accuracy_pct": round(plain, 3), "plain_auroc": plain_auroc}
    for coding in ("int8", "int4"):
        coded = CompressionConfig(method=coding)
        got = [scores(round_trip(final, before, coded, s)) for s in range(repeats)]
        drops = [plain - acc for acc, _ in got]
        out[f"{coding}_drop_points"] = round(statistics.mean(drops), 3)
        out[f"{coding}_drop_points_by_seed"] = [round(d, 3) for d in drops]
        if plain_auroc is not None:
            mean_auroc = statistics.mean(float(a or 0.0) for _, a in got)
            out[f"{coding}_auroc_drop"] = round(plain_auroc - mean_auroc, 5)
    return out


def final_auroc(run_dir: Path) -> float | None:
    """The final round's server AUROC: for a model that still predicts one class everywhere
    (accuracy stuck at the majority share), the score that still moves."""
    from server.records import read_metrics

    rows = read_metrics(run_dir)
    value = rows[-1]["server"].get("auroc") if rows else None
    return None if value is None else float(value)


def round_bytes(run_dir: Path) -> list[int]:
    """Bytes the server received per round: the accepted replies' envelopes, summed."""
    from server.records import read_metrics

    out = []
    for row in read_metrics(run_dir):
        sizes = [c["bytes_sent"] for c in row.get("clients", []) if c.get("status") == "ok"]
        if sizes:
            out.append(sum(int(s) for s in sizes))
    return out


def frozen_bytes(model: str) -> int:
    """Bytes of the model's frozen float parameters (what a coded reply leaves out)."""
    from fedmodel.data.local import model_io
    from fedmodel.models import build_model

    cfg = scenario(model, "none", 0, 10)
    shape, classes = model_io(cfg)
    net = build_model(cfg.model, shape, classes, seed=0)
    return sum(p.numel() * p.element_size() for p in net.parameters() if not p.requires_grad)


def summarise(model: str, runs: list[dict[str, Any]], clients: int) -> dict[str, Any]:
    """Means over seeds per coding, and each coding against no compression."""
    by = {c: [r for r in runs if r["coding"] == c] for c in CODINGS}
    acc = {c: statistics.mean(100 * r["accuracy"] for r in rs) for c, rs in by.items()}
    size = {c: statistics.mean(r["bytes_per_round"] for r in rs) for c, rs in by.items()}
    frozen = frozen_bytes(model)
    plain_trainable = size["none"] - clients * frozen
    out: dict[str, Any] = {"frozen_bytes_per_reply": frozen}
    for c in CODINGS:
        out[c] = {"accuracy_pct_mean": round(acc[c], 3), "bytes_per_round_mean": round(size[c])}
        out[c]["accuracy_pct_by_seed"] = [round(100 * r["accuracy"], 2) for r in by[c]]
        if c != "none":
            out[c]["bytes_ratio"] = round(size["none"] / size[c], 3)
            out[c]["bytes_ratio_trainable"] = round(plain_trainable / size[c], 3)
            out[c]["accuracy_drop_points"] = round(acc["none"] - acc[c], 3)
    spread = [100 * r["accuracy"] for r in by["none"]]
    out["none_accuracy_spread_points"] = round(max(spread) - min(spread), 3) if spread else None
    out["runs"] = runs
    return out


def add_auroc(details: dict[str, Any]) -> None:
    """Final AUROC per run and its mean per coding (read back from the run folders)."""
    for run in details["runs"]:
        run["auroc"] = final_auroc(Path(run["run_dir"]))
    for c in CODINGS:
        values = [r["auroc"] for r in details["runs"] if r["coding"] == c]
        if values and all(v is not None for v in values):
            details[c]["auroc_mean"] = round(statistics.mean(values), 5)


def add_paired(model: str, details: dict[str, Any], cache: Path, repeats: int) -> None:
    """Paired (same noise) drops for every ``none`` run, and their mean (replacing any)."""
    for coding in ("int8", "int4"):
        details[coding].pop("paired_last_round_auroc_drop", None)
    plain = [r for r in details["runs"] if r["coding"] == "none"]
    paired = [paired_last_round(model, Path(r["run_dir"]), cache, repeats) for r in plain]
    details["paired_last_round"] = paired
    for coding in ("int8", "int4"):
        mean = statistics.mean(p[f"{coding}_drop_points"] for p in paired)
        details[coding]["paired_last_round_drop_points"] = round(mean, 3)
        aurocs = [p[f"{coding}_auroc_drop"] for p in paired if f"{coding}_auroc_drop" in p]
        if aurocs:
            details[coding]["paired_last_round_auroc_drop"] = round(statistics.mean(aurocs), 5)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    quiet_env()
    from fedmodel.io import atomic_write_json

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    cache = fresh_run_dir("compression-cache")
    details = previous_models(args.out)  # models measured in an earlier invocation stay
    for model in models:
        if args.paired_only:
            add_auroc(details[model])
            add_paired(model, details[model], cache, args.paired_repeats)
            continue
        load_start = os.getloadavg()
        seeds = range(args.first_seed, args.first_seed + args.seeds)
        runs = [one_run(model, c, seed, args.clients, cache) for seed in seeds for c in CODINGS]
        earlier: list[Any] = []
        if args.first_seed > 0 and model in details:  # more seeds for a model measured before
            runs = details[model]["runs"] + runs
            earlier = [details[model].get("load_average")]
        details[model] = summarise(model, runs, args.clients)
        details[model]["load_average_earlier_invocations"] = earlier
        add_auroc(details[model])
        add_paired(model, details[model], cache, args.paired_repeats)
        details[model] |= {"seeds": len({r["seed"] for r in runs}), "clients": args.clients}
        details[model]["load_average"] = {"start": load_start, "end": os.getloadavg()}
    result = headline(details)
    result |= {"goal": GOAL, "models": details, "machine": machine()}
    atomic_write_json(args.out, result)
    print_table(
        ["model", "coding", "bytes/round", "ratio", "ratio (trainable)", "accuracy %", "drop pts",
         "paired drop pts"],
        [
            [m, c, d[c]["bytes_per_round_mean"], d[c].get("bytes_ratio", "—"),
             d[c].get("bytes_ratio_trainable", "—"), d[c]["accuracy_pct_mean"],
             d[c].get("accuracy_drop_points", "—"), d[c].get("paired_last_round_drop_points", "—")]
            for m, d in details.items()
            for c in CODINGS
        ],
    )  # fmt: skip
    for m in models:
        print(f"{m}: load average (1, 5, 15 min) {details[m]['load_average']}")
    print(f"wrote {args.out}")
    return result


def previous_models(path: Path) -> dict[str, Any]:
    """The per-model details already in the results file (one model per invocation fits a
    shared machine's quiet spells better than both at once)."""
    import json

    if not path.is_file():
        return {}
    return dict(json.loads(path.read_text()).get("models", {}))


def headline(details: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Worst over models: the smallest bytes ratio (trainable basis) and the largest drop."""
    out: dict[str, Any] = {}
    for c in ("int8", "int4"):
        out[f"{c}_bytes_ratio"] = min(
            min(d[c]["bytes_ratio"], d[c]["bytes_ratio_trainable"]) for d in details.values()
        )
        out[f"{c}_accuracy_drop"] = max(d[c]["accuracy_drop_points"] for d in details.values())
        paired = [d[c].get("paired_last_round_drop_points") for d in details.values()]
        if all(x is not None for x in paired):
            out[f"{c}_accuracy_drop_paired"] = max(paired)  # type: ignore[type-var]
    return out


if __name__ == "__main__":
    main()
