"""Validated and robust aggregation: 2 of 10 clients attack and the model does not move.

One Flower simulation runs five federations (Ray start-up and imports are most of a
simulation's cost): a clean FedMedian run, then FedMedian, FedTrimmedAvg, Krum and plain FedAvg
with partition 0 sending NaN and partition 1 a scaled, sign-flipped update
(``tests/robust/attack.py``, test-only). Each federation gets its own copy of the same ten
pristine node folders.

The honest clients' DP noise is fresh in every federation: a node seeds it from its key, its
ledger position, the previous entry's hash and the digest of the signed request, so no two
requests ever share noise (two updates with the same noise would let a receiver cancel it). The
comparisons are therefore bands, not equalities. Over 13 repeats of this module (2026-12-01) the
server loss after the round was 0.16-0.21 for clean FedMedian, 0.17-0.21 for attacked FedMedian,
0.16-0.20 for attacked FedTrimmedAvg, 0.14-0.44 for attacked Krum (one client's noisy update
wins) and 2.1-28 for attacked FedAvg; accuracy 0.91-0.94, 0.90-0.93, 0.92-0.93, 0.84-0.95 and
0.37-0.90. The bounds below sit between those bands with room on both sides.
"""

from __future__ import annotations

import shutil

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.serverapp import Grid, ServerApp

import clients.client_app
import server.server_app
from fedmodel.config import ScenarioConfig
from fedmodel.crypto.keys import save_signing_key
from fedmodel.node_config import load_node_config
from fedmodel.scenarios import apply_overrides
from fedmodel.sim_nodes import prepare_sim_nodes
from fedmodel.simulation import simulate
from server.audit import verify_audit
from server.federation import ServerSettings, run_federation
from server.records import read_metrics
from tests.robust.attack import ATTACKED_PREFIX, ATTACKS, attacked_app

CLIENTS = 10
FLOOR = 0.8
"""Accuracy a robust rule keeps under attack. Fresh DP noise moves one-round accuracy on these
228 rows by several points (0.85-0.95 for the same settings): the loss bounds, not accuracy,
tell a robust rule from attacked FedAvg, whose accuracy falls less than its loss rises."""
CLEAN = "clean-fedmedian"
RUNS = {  # run name -> strategy
    CLEAN: "fedmedian",
    f"{ATTACKED_PREFIX}fedmedian": "fedmedian",
    f"{ATTACKED_PREFIX}fedtrimmedavg": "fedtrimmedavg",
    f"{ATTACKED_PREFIX}krum": "krum",
    f"{ATTACKED_PREFIX}fedavg": "fedavg",
}


def scenario(name: str, strategy: str) -> ScenarioConfig:
    """Breast-cancer MLP, one round of eight local epochs at fixed noise 0.1: near its plateau
    after one round, so the comparison is not a snapshot of a steep learning curve. (Features
    scaled by the declared ranges are smaller than standardised ones were, so it takes more
    local steps, and less noise, than the four at noise 1.0 that standardised features needed:
    the rules under test are the robust aggregations, not DP's utility.)"""
    return apply_overrides(
        ScenarioConfig(),
        {
            "name": name,
            "data.dataset": "breast-cancer",
            "data.test_fraction": 0.4,  # 228 test rows: one row is 0.44 points
            "model.name": "mlp",
            "model.hidden_sizes": [16],
            "optimizer.lr": 0.4,
            "dp.noise_multiplier": 0.1,
            "dp.accountant": "rdp",
            "train.batch_size": 16,
            "train.epochs": 8,
            "strategy.name": strategy,
            "strategy.min_train_nodes": CLIENTS,
            "strategy.krum_num_malicious": len(ATTACKS),
            "strategy.max_update_norm": "off",  # the robust rules themselves are under test
            "federation.num_clients": CLIENTS,
            "federation.rounds": 1,
        },
        "test",
    )


def pristine_nodes(folder, cfg: ScenarioConfig):
    """Ten virtual nodes with fixed signing keys, so every test session replays the same run."""
    prepare_sim_nodes(folder, cfg)
    for pid in range(CLIENTS):
        node = load_node_config(folder / f"node-{pid}" / "node.toml")
        key = Ed25519PrivateKey.from_private_bytes(bytes([pid + 1]) * 32)
        save_signing_key(key, node.signing_key, force=True)
    return folder


def sequential_app(all_settings: list[ServerSettings]) -> ServerApp:
    """Test-only ServerApp: the product's run_federation, once per scenario, on one Grid."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context) -> None:
        for settings in all_settings:
            run_federation(grid, settings)

    return app


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("robust")
    pristine = pristine_nodes(base / "pristine", scenario(CLEAN, "fedmedian"))
    all_settings = []
    for name, strategy in RUNS.items():
        nodes = shutil.copytree(pristine, base / name / "nodes")
        cfg = scenario(name, strategy)
        all_settings.append(ServerSettings(scenario=cfg, run_dir=base / name, sim_nodes_dir=nodes))
    mp = pytest.MonkeyPatch()
    mp.setattr(clients.client_app, "app", attacked_app)
    mp.setattr(server.server_app, "build_server_app", lambda _: sequential_app(all_settings))
    try:
        simulate(all_settings[0])
    finally:
        mp.undo()
    return {name: (base / name, read_metrics(base / name)) for name in RUNS}


def accuracy(runs, name: str) -> float:
    return runs[name][1][-1]["server"]["accuracy"]


def test_nan_update_is_rejected_by_validation(runs):
    for name, (run_dir, rounds) in runs.items():
        rows = {c["node"]: c for c in rounds[1]["clients"]}
        if name == CLEAN:
            assert all(c["status"] == "ok" for c in rows.values())
            continue
        assert rows["node-0"]["status"] == "rejected", name
        assert "non-finite" in rows["node-0"]["reason"]
        assert rows["node-1"]["status"] == "ok"  # finite: left to the robust strategy
        audit = verify_audit(run_dir)
        assert audit.ok and audit.counts["rejected"] == 1 and audit.counts["accepted"] == 9


def loss(runs, name: str) -> float:
    return runs[name][1][-1]["server"]["loss"]


def test_fedmedian_keeps_the_clean_accuracy(runs):
    """Attacked FedMedian stays in the clean run's band: the attack does not move it more than a
    fresh draw of the honest clients' noise does."""
    attacked = f"{ATTACKED_PREFIX}fedmedian"
    assert accuracy(runs, CLEAN) > FLOOR, accuracy(runs, CLEAN)
    assert accuracy(runs, attacked) > FLOOR, (accuracy(runs, CLEAN), accuracy(runs, attacked))
    assert loss(runs, CLEAN) < 0.5 and loss(runs, attacked) < 0.5, (
        loss(runs, CLEAN),
        loss(runs, attacked),
    )


def test_other_robust_strategies_complete_under_attack(runs):
    for strategy, floor in (("fedtrimmedavg", FLOOR), ("krum", 0.78)):
        name = f"{ATTACKED_PREFIX}{strategy}"
        assert [r["round"] for r in runs[name][1]] == [0, 1]
        assert accuracy(runs, name) > floor, (name, accuracy(runs, name))
        assert loss(runs, name) < 0.8, (name, loss(runs, name))


def test_the_attack_does_move_plain_fedavg(runs):
    """The control: without a robust rule, one scaled sign-flipped update ruins the round (its
    loss; on this near-separable table accuracy falls less than the loss rises)."""
    attacked = f"{ATTACKED_PREFIX}fedavg"
    assert loss(runs, attacked) > 1.0, (loss(runs, attacked), loss(runs, CLEAN))
    assert loss(runs, attacked) > 3 * loss(runs, f"{ATTACKED_PREFIX}fedmedian")
