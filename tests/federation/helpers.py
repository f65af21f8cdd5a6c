"""Small real scenarios for federation tests: real data slices, real Flower, real Opacus."""

from __future__ import annotations

from pathlib import Path

from fedmodel.config import ScenarioConfig
from fedmodel.scenarios import apply_overrides, load_scenario, tiny_tabular
from fedmodel.simulation import simulate
from server.federation import ServerSettings


def small_mnist(rounds: int = 2, clients: int = 3, **overrides) -> ScenarioConfig:
    """A CPU-quick MNIST run: 3,000 training images over 3 clients, fixed noise 1.0."""
    cfg = load_scenario("mnist-cnn")
    return apply_overrides(
        cfg,
        {
            "federation.rounds": rounds,
            "federation.num_clients": clients,
            "strategy.min_train_nodes": clients,
            "data.train_limit": 3000,
            "data.test_limit": 1000,
            "partition.scheme": "iid",
            "dp.noise_multiplier": 1.0,
            "train.batch_size": 64,
            "optimizer.lr": 0.1,
            **overrides,
        },
        "test",
        clear=("dp.target_epsilon",),
    )


def small_tabular(strategy: str, clients: int = 2) -> ScenarioConfig:
    """A seconds-long tabular run (scikit-learn's bundled breast-cancer table, MLP)."""
    overrides = {"strategy.name": strategy, "federation.rounds": 1}
    return tiny_tabular(f"tabular-{strategy}", clients, "test", overrides)


def run(cfg: ScenarioConfig, run_dir: Path, *, ray_address: str | None = None, **kwargs) -> Path:
    settings = ServerSettings(scenario=cfg, run_dir=run_dir, **kwargs)
    return simulate(settings, ray_address=ray_address)
