"""A minimal plain Flower (Message API) + Opacus app: the baseline for simulation overhead.

What a careful user would write by hand from Flower's and Opacus' examples
(``/work/shared/reference/flower.md`` section 6): FedAvg, each client wraps the model with
``PrivacyEngine.make_private`` (Poisson sampling, fixed noise), trains one local epoch and keeps
its RDP history in ``context.state``. No ledger, no policy, no budget checks, no run folder.
It uses fedmodel's data loader and CNN only so that both apps train the *same* rows with the
*same* model: the comparison is about the framework around the training loop, not the loop.

``run_baseline(settings)`` runs it on Flower's simulation and returns per-round wall times (from
the server's evaluate hook, which Flower calls after round 0 and after every round) and each
client's own timing of its training loop. ``client_compute(settings)`` runs the same training,
sequentially, in this process, without Flower. Used by ``benchmarks/simulation_overhead.py``.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from torch.nn import functional as F
from torch.utils.data import DataLoader, Subset


@dataclass(frozen=True)
class BaselineSettings:
    """Everything both apps must share for a fair comparison (sent to clients as config)."""

    num_clients: int = 10
    rounds: int = 4
    train_limit: int = 20000
    test_limit: int = 1000
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    seed: int = 0


@lru_cache(maxsize=1)
def _data(train_limit: int, test_limit: int, num_clients: int, seed: int) -> tuple[Any, list]:
    """fedmodel's MNIST slice and IID partitions, cached per process (actors are reused)."""
    from fedmodel.config import DataConfig, PartitionConfig
    from fedmodel.data import dataset_labels, load_dataset, partition_indices

    splits = load_dataset(
        DataConfig(dataset="mnist", train_limit=train_limit, test_limit=test_limit, seed=seed)
    )
    part = PartitionConfig(scheme="iid", num_partitions=num_clients, seed=seed)
    return splits, list(partition_indices(dataset_labels(splits.train), part, None))


def make_net(splits: Any) -> torch.nn.Module:
    from fedmodel.config import ModelConfig
    from fedmodel.models import build_model

    return build_model(ModelConfig(name="cnn"), splits.input_shape, splits.num_classes)


def local_train(
    net: torch.nn.Module, dataset: Any, cfg: dict[str, Any], seed: int
) -> tuple[list, float]:
    """One local epoch of Opacus DP-SGD, the textbook way; returns (history added, seconds)."""
    from opacus import PrivacyEngine

    torch.manual_seed(seed)
    start = time.perf_counter()
    net.train()
    loader = DataLoader(dataset, batch_size=int(cfg["batch_size"]))
    opt = torch.optim.SGD(net.parameters(), lr=float(cfg["lr"]), momentum=float(cfg["momentum"]))
    engine = PrivacyEngine(accountant="rdp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, opt, loader = engine.make_private(
            module=net,
            optimizer=opt,
            data_loader=loader,
            noise_multiplier=float(cfg["noise_multiplier"]),
            max_grad_norm=float(cfg["max_grad_norm"]),
            poisson_sampling=True,
        )
    for x, y in loader:
        if len(y) == 0:  # Poisson sampling can draw an empty batch
            continue
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.remove_hooks()
    return list(engine.accountant.history), time.perf_counter() - start


client_app = ClientApp()


@client_app.train()
def client_train(msg: Message, context: Context) -> Message:
    from opacus.accountants import RDPAccountant

    handler_start = time.perf_counter()
    torch.set_num_threads(1)
    cfg = dict(msg.content["config"])
    splits, parts = _data(
        int(cfg["train_limit"]), int(cfg["test_limit"]), int(cfg["num_clients"]), int(cfg["seed"])
    )
    pid = int(context.node_config["partition-id"])
    dataset = Subset(splits.train, parts[pid].tolist())
    net = make_net(splits)
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    added, seconds = local_train(net, dataset, cfg, seed=int(cfg["server-round"]) * 1000 + pid)
    st = context.state.config_records.get("dp", ConfigRecord({"nm": [], "sr": [], "st": []}))
    acc = RDPAccountant()
    acc.history = [*zip(st["nm"], st["sr"], st["st"], strict=True), *added]
    context.state.config_records["dp"] = ConfigRecord(
        {
            "nm": [float(h[0]) for h in acc.history],
            "sr": [float(h[1]) for h in acc.history],
            "st": [int(h[2]) for h in acc.history],
        }
    )
    metrics = MetricRecord(
        {
            "num-examples": len(dataset),
            "epsilon": float(acc.get_epsilon(float(cfg["delta"]))),
            "train-seconds": seconds,
            "handler-seconds": time.perf_counter() - handler_start,
            "partition-id": pid,
        }
    )
    content = RecordDict({"arrays": ArrayRecord(net.state_dict()), "metrics": metrics})
    return Message(content, reply_to=msg)


@dataclass
class BaselineRun:
    """Timestamps of the server's evaluate hook (round 0 first) and clients' own timings."""

    round_ends: list[float]
    client_seconds: list[list[float]]
    handler_seconds: list[list[float]]
    accuracy: list[float]
    epsilon: float

    def round_walls(self) -> list[float]:
        return [b - a for a, b in zip(self.round_ends, self.round_ends[1:], strict=False)]


def _per_client(records: list[RecordDict], key: str) -> MetricRecord:
    """Keep every client's timing and epsilon (FedAvg would average them away)."""
    rows = [r["metrics"] for r in records]
    return MetricRecord(
        {
            "train-seconds": [float(m["train-seconds"]) for m in rows],
            "handler-seconds": [float(m["handler-seconds"]) for m in rows],
            "epsilon": [float(m["epsilon"]) for m in rows],
        }
    )


def build_server_app(settings: BaselineSettings, out: BaselineRun) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        splits, _ = _data(
            settings.train_limit, settings.test_limit, settings.num_clients, settings.seed
        )
        net = make_net(splits)
        test = DataLoader(splits.test, batch_size=256)

        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            net.load_state_dict(arrays.to_torch_state_dict())
            net.eval()
            correct = 0
            with torch.no_grad():
                for x, y in test:
                    correct += int((net(x).argmax(1) == y).sum())
            out.accuracy.append(correct / len(splits.test))
            out.round_ends.append(time.perf_counter())
            return MetricRecord({"accuracy": out.accuracy[-1]})

        n = settings.num_clients
        strategy = FedAvg(
            fraction_evaluate=0.0,
            min_train_nodes=n,
            min_available_nodes=n,
            train_metrics_aggr_fn=_per_client,
        )
        result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(net.state_dict()),
            num_rounds=settings.rounds,
            train_config=ConfigRecord({**asdict(settings)}),
            evaluate_fn=evaluate,
        )
        for rnd in sorted(result.train_metrics_clientapp):
            rec = result.train_metrics_clientapp[rnd]
            out.client_seconds.append(list(rec["train-seconds"]))
            out.handler_seconds.append(list(rec["handler-seconds"]))
            out.epsilon = max([out.epsilon, *rec["epsilon"]])

    return app


def run_baseline(settings: BaselineSettings, ray_num_cpus: int = 1) -> BaselineRun:
    """Flower simulation, one Ray actor per ``ray_num_cpus`` (1: clients run one at a time)."""
    from flwr.simulation import run_simulation

    # Ray workers import this module by name: make the benchmarks folder importable there.
    here = os.path.dirname(os.path.abspath(__file__))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (here, os.environ.get("PYTHONPATH", "")) if p
    )
    out = BaselineRun(
        round_ends=[], client_seconds=[], handler_seconds=[], accuracy=[], epsilon=0.0
    )
    run_simulation(
        server_app=build_server_app(settings, out),
        client_app=client_app,
        num_supernodes=settings.num_clients,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {
                "num_cpus": ray_num_cpus,
                "logging_level": "ERROR",
                "log_to_driver": False,
            },
        },
    )
    return out


def client_compute(settings: BaselineSettings) -> list[float]:
    """The same clients' training, one after another in this process, without Flower."""
    torch.set_num_threads(1)
    splits, parts = _data(
        settings.train_limit, settings.test_limit, settings.num_clients, settings.seed
    )
    cfg = asdict(settings)
    init = make_net(splits).state_dict()
    seconds = []
    for pid, idx in enumerate(parts):
        net = make_net(splits)
        net.load_state_dict(init)
        _, s = local_train(net, Subset(splits.train, idx.tolist()), cfg, seed=pid)
        seconds.append(s)
    return seconds


if __name__ == "__main__":
    # Smoke test. Ray workers unpickle the apps by module name, never as ``__main__``.
    import baseline_flower_opacus as this

    from fedmodel.simulation import quiet_flower_env

    quiet_flower_env()
    run = this.run_baseline(this.BaselineSettings(rounds=2, train_limit=3000))
    print("round walls", run.round_walls(), "client seconds", run.client_seconds, run.accuracy)
