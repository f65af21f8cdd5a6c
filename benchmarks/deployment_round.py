"""Deployment round latency: per-round wall time against the compute in it, stock vs fedmodel.

Question answered: how many seconds does a deployment round spend beyond training and
evaluating, with Flower's stock node runtime and with fedmodel's (warm ClientApp launcher,
0.5 s idle SuperNode poll, 0.2 s ServerApp reply poll), with TLS + node authentication and
without, and with sealed updates on top? Four loopback deployments run in this one process,
one after another, on the same
tiny workload (2 SuperNodes, breast-cancer table, 16-unit MLP, DP-SGD sigma 1.0), so the
rounds are dominated by what the runtime adds:

* ``stock``            TLS + auth; Flower's SuperExec (a fresh ``flwr-clientapp`` process per
                       task, re-importing torch/Opacus) and its 3 s idle poll.
* ``fedmodel_tls_auth`` TLS + auth; fedmodel's node runtime.
* ``fedmodel_tls_auth_sealed`` the same plus sealed updates (nodes pin the ServerApp's keys;
                       each update is AES-GCM sealed and Ed25519 signed, the global model signed).
* ``fedmodel_insecure`` the same without TLS or node authentication.

Compute per round = the slower node's ClientApp work (policy, ledger and privacy accounting,
DP-SGD; nodes train in parallel) + the server's central evaluation, each timed in a warm process
on the same host (median of ``--repeats``), just before and just after each deployment: on a
shared host the load moves, and compute measured at another time would not subtract. Round
wall = time between consecutive rounds appearing in ``metrics.jsonl`` (polled every 20 ms).
Round 1 carries first-task costs (FAB install, data load in the node), so the overhead is the
mean over rounds 2..N; round 1 is reported apart.
The ServerApp's 0.2 s reply poll is on in every mode (it lives in the ServerApp, not the node),
so ``stock`` understates stock Flower by up to 3 s per round (1.5 s on average).

    .venv/bin/python benchmarks/deployment_round.py [--rounds 4] [--stock-rounds 3]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from _common import RESULTS_DIR, Sampler, machine, quiet_env

quiet_env()

import torch  # noqa: E402
from flwr.app import Context, Message, RecordDict  # noqa: E402

from clients.client_app import app as client_app  # noqa: E402
from fedmodel.config import ScenarioConfig  # noqa: E402
from fedmodel.crypto.pin import write_pin  # noqa: E402
from fedmodel.crypto.seal import sign_request, state_dict_to_bytes  # noqa: E402
from fedmodel.data import load_dataset  # noqa: E402
from fedmodel.io import atomic_write_json  # noqa: E402
from fedmodel.models import build_model  # noqa: E402
from fedmodel.partitions import dump_assignment  # noqa: E402
from fedmodel.scenarios import apply_overrides, scenario_to_toml, tiny_tabular  # noqa: E402
from fedmodel.training import evaluate  # noqa: E402
from server import wire  # noqa: E402
from server.deploy.config import load_server_config  # noqa: E402
from server.deploy.loopback import Federation, kill_group, loopback, start, wait_for_count  # noqa: E402
from server.deploy.submit import RunRequest, submit_run  # noqa: E402
from server.sealing import SignedTraffic, ensure_server_keys, load_server_keys  # noqa: E402

NODES = ["node-0", "node-1"]
TASK_WALL = re.compile(r"task \d+ finished in ([0-9.]+)s")
# node.log lines (stamped by the supervisor, ms) that bound the phases of one task
MARKS = {
    "receive": "Receiving: train message",
    "received": "Received successfully",
    "task_started": "[flwr-clientapp] Start FAB installation.",
    "app_loading": "Start `ClientApp` Loading.",
    "reply_noticed": "Sending: train message",
    "sent": "Sent successfully",
}
PHASES = {  # name: (from mark, to mark)
    "pull_message_from_superlink": ("receive", "received"),
    "start_task_process": ("received", "task_started"),
    "install_fab": ("task_started", "app_loading"),
    "load_app_train_push_reply": ("app_loading", "reply_noticed"),
    "push_reply_to_superlink": ("reply_noticed", "sent"),
}
MODES: dict[str, dict[str, Any]] = {
    "stock": {"deployment": {"*": {"warm_launcher": False, "poll_interval": 3.0}}},
    "fedmodel_tls_auth": {},
    "fedmodel_tls_auth_sealed": {},  # + end-to-end sealed updates and a signed global model
    "fedmodel_insecure": {"insecure": True},
}
SEALED_MODES = {"fedmodel_tls_auth_sealed"}
# deployed nodes require sealed updates unless their policy says otherwise; the plain modes are
# the comparison, so every node here lifts that default by name
PLAIN_ALLOWED = {name: {"require_sealed_updates": False} for name in NODES}
SEALED_SCENARIO = "scenario-sealed.toml"


def scenario() -> ScenarioConfig:
    return tiny_tabular("bench-deploy", len(NODES), "benchmark")


# --- compute, timed in this (warm) process -----------------------------------------------------


def client_compute(cfg: ScenarioConfig, fed: Federation, repeats: int) -> dict[str, float]:
    """Median seconds of one node's ClientApp train handler, called as Flower calls it, on a
    request signed by keys the node pinned (an unsigned one is refused in no time)."""
    from flwr.supercore.task_identity import TaskIdentity  # what flwr-clientapp sets per task

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    splits = load_dataset(cfg.data)
    model = build_model(cfg.model, tuple(splits.input_shape), splits.num_classes)
    keys = ensure_server_keys(fed.root / "compute-server-keys")
    for name in NODES:
        write_pin(fed.node_toml(name).parent, keys.exchange_fingerprint, keys.verify_key_path)
    payload = state_dict_to_bytes(model.state_dict())
    assignment = {name: (k, len(NODES)) for k, name in enumerate(NODES)}  # as server.toml says
    out = {}
    for name in NODES:
        context = Context(0, 0, {"config": str(fed.node_toml(name))}, RecordDict(), {})
        samples = []
        for rnd in range(1, repeats + 2):  # the first call warms caches; not counted
            run_id = f"bench-{name}-{rnd}-{time.time_ns()}"
            traffic = SignedTraffic(keys, {}, run_id, sealed=False)
            request = {wire.RUN_ID: run_id, wire.NUM_ROUNDS: 99,
                       wire.SCENARIO: cfg.without_budgets().model_dump_json(),
                       wire.PARTITIONS: dump_assignment(assignment)}  # fmt: skip
            signed = traffic.node_config(request, 1, "train", 0, int(time.time()) + 600)
            blob = sign_request(payload, keys.signing, signed)
            message = Message(wire.request_record(blob), dst_node_id=0, message_type="train")
            t0 = time.perf_counter()
            reply = client_app(message, context)
            samples.append(time.perf_counter() - t0)
            if reply.has_error() or wire.UPDATE not in reply.content:
                raise RuntimeError(f"{name}: the timed handler did not train: {reply!r}")
        out[name] = statistics.median(samples[1:])
    return out


def server_eval(cfg: ScenarioConfig, repeats: int) -> float:
    splits = load_dataset(cfg.data)
    model = build_model(cfg.model, tuple(splits.input_shape), splits.num_classes)
    samples = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        evaluate(model, splits.test, batch_size=cfg.train.eval_batch_size, device="cpu")
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples[1:])


# --- one deployment -----------------------------------------------------------------------------


class RoundClock(Sampler):
    """Stamps each round when its line lands in metrics.jsonl (20 ms resolution)."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(0.02)
        self.path = run_dir / "metrics.jsonl"
        self.stamps: list[float] = []

    def sample(self) -> None:
        lines = self.path.read_text().count("\n") if self.path.is_file() else 0
        while len(self.stamps) < lines:
            self.stamps.append(time.monotonic())


def run_mode(name: str, root: Path, scenario_path: Path, rounds: int) -> dict[str, Any]:
    fed = loopback(
        root / name, NODES, NODES, round_timeout=300.0, policies=PLAIN_ALLOWED, **MODES[name]
    )
    procs = []
    try:
        server_log = fed.root / "server.out"
        procs.append(start(["server", "start", "--config", str(fed.server_toml)], server_log))
        wait_for_count(server_log, "SuperLink ready", 1, 300, procs[0])
        pin_nodes(fed)  # every request is signed: every site pins the coordinator first
        if name in SEALED_MODES:
            scenario_path = scenario_path.with_name(SEALED_SCENARIO)
        for node in NODES:
            procs.append(start(["node", "start", "--config", str(fed.node_toml(node))],
                               fed.root / f"{node}.out"))  # fmt: skip
        warm = name != "stock"
        for node in NODES:
            log = fed.root / node / "logs" / "node.log"
            wait_for_count(log, "SuperNode ID:", 1, 300)
            if warm:  # tasks would wait for the launcher's imports: not what a round costs
                wait_for_count(log, "warm launcher ready", 1, 300)
        run_dir = fed.root / "runs" / "bench"
        request = RunRequest(str(scenario_path), rounds, run_dir, min_nodes=2)
        t0 = time.monotonic()
        with RoundClock(run_dir) as clock:
            submit_run(load_server_config(fed.server_toml), request, lambda row: None)
        total = time.monotonic() - t0
    finally:
        for proc in reversed(procs):
            kill_group(proc)
    walls = [b - a for a, b in zip(clock.stamps, clock.stamps[1:], strict=False)]
    logs = [(fed.root / node / "logs" / "node.log").read_text() for node in NODES]
    tasks = [float(m) for log in logs for m in TASK_WALL.findall(log)]
    return {
        "tls": not fed.insecure,
        "node_auth": not fed.insecure,
        "rounds": rounds,
        "submit_to_round0_s": round(clock.stamps[0] - t0, 2),
        "round_walls_s": [round(w, 2) for w in walls],
        "first_round_s": round(walls[0], 2),
        "steady_round_s": round(statistics.mean(walls[1:]), 2),
        "total_s": round(total, 2),
        "launcher_task_walls_s": tasks,  # warm modes: pull + FAB + ClientApp + push, per task
        "node_phases_median_s": node_phases(logs),
    }


def pin_nodes(fed: Federation) -> None:
    """What each site does once with the fingerprints the coordinator reads out to it."""
    keys = load_server_keys(load_server_config(fed.server_toml).server_keys_dir)
    for node in NODES:
        write_pin(fed.node_toml(node).parent, keys.exchange_fingerprint, keys.verify_key_path)


def node_phases(logs: list[str]) -> dict[str, float]:
    """Where a node's share of a round goes, from its log: median seconds per phase."""
    samples: dict[str, list[float]] = {name: [] for name in PHASES}
    for log in logs:
        for task in _tasks(log):
            for name, (a, b) in PHASES.items():
                if a in task and b in task:
                    samples[name].append(task[b] - task[a])
    return {k: round(statistics.median(v), 3) for k, v in samples.items() if v}


def _tasks(log: str) -> list[dict[str, float]]:
    """One dict of mark -> time per task, in log order (a new "receive" starts a task)."""
    tasks: list[dict[str, float]] = []
    for line in log.splitlines():
        for mark, text in MARKS.items():
            if text in line:
                if mark == "receive":
                    tasks.append({})
                if tasks and mark not in tasks[-1]:
                    stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
                    tasks[-1][mark] = stamp.timestamp()
    return tasks


def compute_now(cfg: ScenarioConfig, fed: Federation, repeats: int) -> dict[str, Any]:
    """Compute per round at this moment: the host is shared, so it is re-measured per mode."""
    nodes = client_compute(cfg, fed, repeats)
    evaluation = server_eval(cfg, repeats)
    return {
        "client_s": {k: round(v, 3) for k, v in nodes.items()},
        "client_summed_s": round(sum(nodes.values()), 3),
        "server_eval_s": round(evaluation, 3),
        "round_s": max(nodes.values()) + evaluation,  # nodes train in parallel
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def measure_mode(
    name: str, root: Path, scenario_path: Path, rounds: int, probe: Any
) -> dict[str, Any]:
    """Compute before and after the deployment; overhead against their mean."""
    before = probe()
    result = run_mode(name, root, scenario_path, rounds)
    after = probe()
    compute = (before["round_s"] + after["round_s"]) / 2
    result |= {
        "compute_before": before,
        "compute_after": after,
        "compute_per_round_s": round(compute, 3),
        "overhead_s": round(result["steady_round_s"] - compute, 2),
    }
    print(name, result, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--stock-rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "deployment_round.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = scenario()
    with tempfile.TemporaryDirectory(prefix="fedmodel-bench-deploy-") as tmp:
        root = Path(tmp)
        scenario_path = root / "scenario.toml"
        scenario_path.write_text(scenario_to_toml(cfg))
        sealed = apply_overrides(cfg, {"security.sealed_updates": True}, "benchmark")
        (root / SEALED_SCENARIO).write_text(scenario_to_toml(sealed))
        compute_nodes = loopback(root / "compute", NODES, NODES, policies=PLAIN_ALLOWED)

        def probe() -> dict[str, Any]:
            return compute_now(cfg, compute_nodes, args.repeats)

        modes = {
            name: measure_mode(name, root, scenario_path,
                               args.stock_rounds if name == "stock" else args.rounds, probe)
            for name in args.modes
        }  # fmt: skip
    overheads = {name: modes[name]["overhead_s"] if name in modes else None for name in MODES}
    results = {
        "overhead_s": overheads["fedmodel_tls_auth"],
        "stock_flower_overhead_s": overheads["stock"],
        "insecure_overhead_s": overheads["fedmodel_insecure"],
        "overhead_sealed_s": overheads["fedmodel_tls_auth_sealed"],
        "modes": modes,
        "workload": "2 SuperNodes on 127.0.0.1, breast-cancer, MLP[16], DP-SGD sigma 1.0, batch 32",
        "machine": machine(),
        "command": " ".join(["benchmarks/deployment_round.py", *sys.argv[1:]]),
    }
    atomic_write_json(args.out, results)
    print(
        f"overhead per round: fedmodel {results['overhead_s']} s (TLS+auth), "
        f"{results['overhead_sealed_s']} s (TLS+auth+sealed), "
        f"{results['insecure_overhead_s']} s (insecure); "
        f"stock {results['stock_flower_overhead_s']} s"
    )


if __name__ == "__main__":
    main()
