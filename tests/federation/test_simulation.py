"""A real Flower simulation: accuracy improves and per-client epsilon is cumulative."""

from __future__ import annotations

import json

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from server.records import read_metrics
from tests.federation.helpers import run, small_mnist


@pytest.fixture(scope="module")
def two_round_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("sim") / "run"
    return run(small_mnist(rounds=2), run_dir)


def test_run_folder_is_complete(two_round_run):
    run_dir = two_round_run
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["engine"] == "simulation"
    assert len(info["model_hash"]) == 64
    expected = ["scenario.toml", "metrics.jsonl", "clients.csv", "model/model.safetensors"]
    expected += [f"checkpoints/round-000{r}.safetensors" for r in (1, 2)]
    for rel in expected:
        assert (run_dir / rel).is_file(), rel
    assert [r["round"] for r in read_metrics(run_dir)] == [0, 1, 2]


def test_accuracy_improves_over_rounds(two_round_run):
    acc = [r["server"]["accuracy"] for r in read_metrics(two_round_run)]
    assert acc[0] < 0.3, acc  # untrained
    assert acc[2] > acc[0] + 0.3, acc
    assert acc[2] >= acc[1] - 0.02, acc


def test_epsilon_is_cumulative_and_equals_opacus(two_round_run):
    rounds = read_metrics(two_round_run)
    by_node: dict[str, list[dict]] = {}
    for row in rounds[1:]:
        for client in row["clients"]:
            assert client["status"] == "ok", client
            by_node.setdefault(client["node"], []).append(client)
    assert len(by_node) == 3
    for node, rows in by_node.items():
        history = [(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in rows]
        prv, rdp = PRVAccountant(), RDPAccountant()
        prv.history, rdp.history = list(history), list(history)
        delta = rows[-1]["delta"]
        assert rows[-1]["epsilon"] == pytest.approx(prv.get_epsilon(delta), rel=1e-9), node
        assert rows[-1]["epsilon_rdp"] == pytest.approx(rdp.get_epsilon(delta), rel=1e-9), node
        # one round's epsilon is strictly less than two rounds': no per-round reset
        assert rows[0]["epsilon"] < rows[1]["epsilon"]


def test_ledger_heads_are_recorded_per_round(two_round_run):
    rounds = read_metrics(two_round_run)
    for rnd in (1, 2):
        heads = {c["node"]: c["ledger_head"] for c in rounds[rnd]["clients"]}
        assert all(h["count"] == rnd and len(h["hash"]) == 64 for h in heads.values()), heads
