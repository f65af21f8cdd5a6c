"""Simulation overhead: round wall time over the clients' summed training compute.

``ratio``: fedmodel's real ServerApp and ClientApp on Flower's simulation, 10 MNIST clients. The
ClientApp is wrapped (``timed_app`` below) only to time, inside the Ray actor, (a) the call to
``fedmodel.training.train`` that ``clients.train_round`` makes and (b) the whole client handler
(policy, budget check, ledger, DP-SGD, reply). Round wall time is the interval between the
server's end-of-round callbacks (evaluation and checkpoint included). Both are taken in the same
run, so machine load hits numerator and denominator alike. Clients run one at a time (one Ray
actor, ``ray_num_cpus=1``): with two actors on two cores the ratio would drop below 1 through
parallelism and say nothing about overhead. Round 1 is left out (actor start, imports, data).

``baseline_ratio``: the same measurement for ``benchmarks/baseline_flower_opacus.py``, a plain
Flower + Opacus app with the same rows, model, batch, learning rate, noise and clipping.

``clients_1000_peak_rss_gb``, ``clients_10000_round_s``, ``clients_10000_peak_rss_gb``:
fedmodel with 1,000 (10,000) virtual nodes of 60 images each, a tenth sampled per round, two
Ray actors, through the real ``simulate`` path; the peak RSS summed over this process and all
its descendants (Ray's GCS, raylet and workers), sampled every 0.5 s; the round time is the
slowest round after the first (round 1 also starts the actors and loads the data), and every
round's wall and process-tree CPU seconds are recorded beside it.

Usage: ``python benchmarks/simulation_overhead.py [--parts PART,...]`` with parts ratio, baseline,
clients1000 and clients10000; results are merged into
``benchmarks/results/simulation_overhead.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from _common import (
    RESULTS_DIR,
    PeakRss,
    fresh_run_dir,
    machine,
    merge_results,
    print_table,
    quiet_env,
    run_summary,
    tree_cpu_seconds,
)
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

RESULTS = RESULTS_DIR / "simulation_overhead.json"
TIMINGS_ENV = "FEDMODEL_BENCH_TIMINGS"  # file the actors append their timings to

timed_app = ClientApp()


@timed_app.train()
def timed_train(msg: Message, context: Context) -> Message:
    """fedmodel's ClientApp, unchanged, with its ``train`` call and the handler timed."""
    import clients.train_round as tr
    from clients import client_app
    from fedmodel.crypto.seal import peek_request

    last: dict[str, float] = {}
    if not hasattr(tr, "_bench_real_train"):
        tr._bench_real_train = tr.train  # type: ignore[attr-defined]
    real = tr._bench_real_train  # type: ignore[attr-defined]

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            last["train_s"] = time.perf_counter() - start

    tr.train = timed
    start = time.perf_counter()
    reply = client_app.train(msg, context)
    handler = time.perf_counter() - start
    row = {
        "round": peek_request(msg.content["signed-request"]["blob"])[1],
        "partition": int(context.node_config["partition-id"]),
        "train_s": last.get("train_s"),
        "handler_s": handler,
    }
    with open(os.environ[TIMINGS_ENV], "a") as fh:
        fh.write(json.dumps(row) + "\n")
    return reply


def overhead_scenario(args: argparse.Namespace) -> Any:
    from fedmodel.scenarios import apply_overrides, load_scenario

    return apply_overrides(
        load_scenario("mnist-cnn"),
        {
            "name": "overhead-mnist",
            "data.train_limit": args.train_limit,
            "data.test_limit": 1000,
            "partition.scheme": "iid",
            "federation.num_clients": args.clients,
            "strategy.min_train_nodes": args.clients,
            "federation.rounds": args.rounds,
            "federation.ray_num_cpus": 1,
            "train.batch_size": args.batch,
            "optimizer.lr": args.lr,
            "dp.noise_multiplier": args.noise,
            "dp.max_grad_norm": args.clip,
        },
        "overhead",
        clear=("dp.target_epsilon", "budget"),
    )


def measure_fedmodel(args: argparse.Namespace) -> dict[str, Any]:
    """fedmodel's own server/client apps, wrapped for timing only (see module doc)."""
    import simulation_overhead as this
    from flwr.simulation import run_simulation

    from fedmodel.sim_linkstate import indexed_link_state
    from fedmodel.sim_nodes import declare_sim_nodes
    from server.federation import ServerSettings
    from server.server_app import build_server_app

    cfg = overhead_scenario(args)
    run_dir = fresh_run_dir("overhead-fedmodel")
    timings = run_dir / "client-timings.jsonl"
    os.environ[TIMINGS_ENV] = str(timings)
    ends: list[float] = []
    settings = ServerSettings(
        scenario=cfg, run_dir=run_dir, on_round=lambda *_: ends.append(time.perf_counter())
    )
    settings.sim_nodes_dir = run_dir / "nodes"
    declare_sim_nodes(settings.sim_nodes_dir, cfg)
    with indexed_link_state():  # as fedmodel.simulation runs it
        run_simulation(
            server_app=build_server_app(settings),
            client_app=this.timed_app,
            num_supernodes=cfg.federation.num_clients,
            backend_config=_backend(1),
        )
    rows = [json.loads(line) for line in timings.read_text().splitlines()]
    train = _by_round(rows, "train_s")
    handler = _by_round(rows, "handler_s")
    return _ratio(ends, train, handler) | {"run": run_summary(run_dir)}


def measure_baseline(args: argparse.Namespace) -> dict[str, Any]:
    import baseline_flower_opacus as bl

    settings = bl.BaselineSettings(
        num_clients=args.clients,
        rounds=args.rounds,
        train_limit=args.train_limit,
        batch_size=args.batch,
        lr=args.lr,
        noise_multiplier=args.noise,
        max_grad_norm=args.clip,
    )
    run = bl.run_baseline(settings, ray_num_cpus=1)
    train = {r + 1: sum(s) for r, s in enumerate(run.client_seconds)}
    handler = {r + 1: sum(s) for r, s in enumerate(run.handler_seconds)}
    out = _ratio(run.round_ends, train, handler)
    return out | {"accuracy": run.accuracy[-1], "epsilon": run.epsilon}


def _by_round(rows: list[dict[str, Any]], key: str) -> dict[int, float]:
    sums: dict[int, float] = {}
    for row in rows:
        if row.get(key) is not None:
            sums[row["round"]] = sums.get(row["round"], 0.0) + float(row[key])
    return sums


def _ratio(
    ends: list[float], train: dict[int, float], handler: dict[int, float] | None
) -> dict[str, Any]:
    """Round r's wall time is ends[r] - ends[r-1] (ends[0]: after round 0's evaluation)."""
    walls = {r: ends[r] - ends[r - 1] for r in range(1, len(ends))}
    used = [r for r in sorted(walls) if r >= 2 and r in train]
    if not used:
        raise RuntimeError(f"no measurable rounds: walls {walls}, train {train}")
    wall, compute = sum(walls[r] for r in used), sum(train[r] for r in used)
    out: dict[str, Any] = {
        "ratio": round(wall / compute, 3),
        "rounds_used": used,
        "round_wall_s": [round(walls[r], 2) for r in used],
        "summed_train_s": [round(train[r], 2) for r in used],
        "median_round_ratio": round(statistics.median(walls[r] / train[r] for r in used), 3),
        "round1_wall_s": round(walls.get(1, float("nan")), 2),
    }
    if handler is not None:
        h = sum(handler[r] for r in used)
        out |= {
            "summed_handler_s": [round(handler[r], 2) for r in used],
            "handler_ratio": round(h / compute, 3),
            "wall_over_handler": round(wall / h, 3),
        }
    return out


def measure_many(args: argparse.Namespace, n: int, rounds: int) -> dict[str, Any]:
    """Wall time, CPU time and memory of an ``n``-node simulation; the real ``simulate`` path,
    nothing wrapped. Round r's wall time runs from the end of round r-1's evaluation to the end
    of round r's; its CPU time is the whole process tree's (this process, Ray's GCS, raylet
    and workers) over the same interval, which the machine's other load does not inflate."""
    from fedmodel.scenarios import apply_overrides, load_scenario
    from fedmodel.simulation import simulate
    from server.federation import ServerSettings

    cfg = apply_overrides(
        load_scenario("mnist-cnn"),
        {
            "name": f"overhead-{n}",
            "data.train_limit": args.big_per_client * n,
            "data.test_limit": 1000,
            "partition.scheme": "iid",
            "federation.num_clients": n,
            "strategy.fraction_train": args.big_fraction,
            "strategy.min_train_nodes": max(1, int(n * args.big_fraction)),
            "federation.rounds": rounds,
            "train.batch_size": 16,
            "optimizer.lr": 0.1,
            "dp.noise_multiplier": 1.0,
        },
        f"clients{n}",
        clear=("dp.target_epsilon", "budget"),
    )
    run_dir = fresh_run_dir(f"overhead-{n}")
    marks: list[tuple[float, float, float]] = []

    def mark(*_: Any) -> None:
        marks.append((time.perf_counter(), tree_cpu_seconds(os.getpid()), os.getloadavg()[0]))

    start = time.perf_counter()
    with PeakRss() as peak:
        simulate(ServerSettings(scenario=cfg, run_dir=run_dir, on_round=mark))
    summary = run_summary(run_dir)
    walls = [round(b[0] - a[0], 1) for a, b in itertools.pairwise(marks)]
    cpus = [round(b[1] - a[1], 1) for a, b in itertools.pairwise(marks)]
    steady = walls[1:] or walls
    return {
        f"clients_{n}_peak_rss_gb": round(peak.peak / 2**30, 2),
        f"clients_{n}_round_s": round(max(steady), 1) if steady else None,
        "clients": n,
        "sampled_per_round": int(n * args.big_fraction),
        "images_asked_per_client": args.big_per_client,
        "images_per_client": _rows_trained(run_dir),
        "rounds": rounds,
        "round_wall_s": walls,
        "round_cpu_s": cpus,
        "loadavg_1m_at_round_end": [round(m[2], 2) for m in marks[1:]],
        "node_folders_made": len(list((run_dir / "nodes").glob("node-*"))),
        "wall_s": round(time.perf_counter() - start, 1),
        "client_replies": summary["client_replies"],
        "accuracy": summary["accuracy"],
    }


def _rows_trained(run_dir: Path) -> int | None:
    """A trained node's row count, from its ledger: MNIST's 60,000 training images spread over
    10,000 nodes leave 6 each whatever was asked for."""
    for ledger in sorted((run_dir / "nodes").glob("node-*/ledger/ledger.jsonl")):
        for line in ledger.read_text().splitlines():
            body = json.loads(line)["body"]
            if body.get("kind") == "round":
                return int(body["dataset_size"])
    return None


def _backend(ray_num_cpus: int) -> dict[str, Any]:
    return {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": ray_num_cpus, "logging_level": "ERROR", "log_to_driver": False},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default="ratio,baseline,clients1000")
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--train-limit", type=int, default=20000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--noise", type=float, default=1.0)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--big-per-client", type=int, default=60)
    p.add_argument("--big-fraction", type=float, default=0.1)
    p.add_argument("--big-rounds", type=int, default=2)
    p.add_argument("--huge-rounds", type=int, default=3, help="rounds of the 10,000-node part")
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    quiet_env()
    # Ray workers import this module and the baseline by name: make this folder importable.
    here = str(Path(__file__).resolve().parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (here, os.environ.get("PYTHONPATH", "")) if p
    )
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    common = {
        "clients": args.clients,
        "rounds": args.rounds,
        "train_limit": args.train_limit,
        "batch_size": args.batch,
        "lr": args.lr,
        "noise_multiplier": args.noise,
        "max_grad_norm": args.clip,
        "ray_actors": 1,
    }
    table = []
    if "ratio" in parts:
        res = measure_fedmodel(args)
        merge_results(args.out, "ratio", res["ratio"])
        merge_results(args.out, "fedmodel", res | {"settings": common, "machine": machine()})
        table.append(["fedmodel", res["ratio"], res["round_wall_s"], res["summed_train_s"]])
        print("fedmodel", res, flush=True)
    if "baseline" in parts:
        res = measure_baseline(args)
        merge_results(args.out, "baseline_ratio", res["ratio"])
        merge_results(args.out, "baseline", res | {"settings": common, "machine": machine()})
        table.append(["plain Flower+Opacus", res["ratio"], res["round_wall_s"],
                      res["summed_train_s"]])  # fmt: skip
        print("baseline", res, flush=True)
    for n, rounds in ((1000, args.big_rounds), (10000, args.huge_rounds)):
        if f"clients{n}" not in parts:
            continue
        res = measure_many(args, n, rounds)
        for key in (f"clients_{n}_peak_rss_gb", f"clients_{n}_round_s"):
            merge_results(args.out, key, res[key])
        merge_results(args.out, f"clients_{n}", res | {"machine": machine()})
        print(f"clients{n}", res, flush=True)
    if table:
        print_table(["app", "wall / train", "round wall s", "summed train s"], table)


if __name__ == "__main__":
    import simulation_overhead as this  # actors unpickle ``timed_app`` by module name

    this.main()
