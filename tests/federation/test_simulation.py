"""A real Flower simulation: accuracy improves and per-client epsilon is cumulative."""

from __future__ import annotations

import json

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from fedmodel.config import PrivacyBudget
from server.records import read_metrics
from tests.federation.helpers import run, small_mnist

# node-0's own cap sits between its epsilon after one round (2.25) and after two (2.81), so it
# must train in round 1 and refuse round 2; the others keep the scenario's default cap (3.5).
CAP_NODE0 = PrivacyBudget(epsilon=2.5, delta=1e-5)


@pytest.fixture(scope="module")
def two_round_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("sim") / "run"
    cfg = small_mnist(rounds=2).model_copy(update={"client_budgets": {0: CAP_NODE0}})
    return run(cfg, run_dir)


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
    assert acc[0] < 0.2, acc  # untrained
    assert acc[1] > acc[0] + 0.1, acc
    assert acc[2] > acc[0] + 0.2, acc


def test_epsilon_is_cumulative_and_equals_opacus(two_round_run):
    rounds = read_metrics(two_round_run)
    by_node: dict[str, list[dict]] = {}
    for row in rounds[1:]:
        for client in row["clients"]:
            if client["status"] == "ok":
                by_node.setdefault(client["node"], []).append(client)
    assert sorted(by_node) == ["node-0", "node-1", "node-2"]
    for node in ("node-1", "node-2"):
        rows = by_node[node]
        history = [(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in rows]
        prv, rdp = PRVAccountant(), RDPAccountant()
        prv.history, rdp.history = list(history), list(history)
        delta = rows[-1]["delta"]
        assert rows[-1]["epsilon"] == pytest.approx(prv.get_epsilon(delta), rel=1e-9), node
        assert rows[-1]["epsilon_rdp"] == pytest.approx(rdp.get_epsilon(delta), rel=1e-9), node
        # one round's epsilon is strictly less than two rounds': no per-round reset
        assert rows[0]["epsilon"] < rows[1]["epsilon"]


def test_node_refuses_the_round_that_would_pass_its_own_cap(two_round_run):
    rounds = read_metrics(two_round_run)
    first = {c["node"]: c for c in rounds[1]["clients"]}
    second = {c["node"]: c for c in rounds[2]["clients"]}
    assert first["node-0"]["status"] == "ok"
    assert first["node-0"]["epsilon"] < CAP_NODE0.epsilon
    refusal = second["node-0"]
    assert refusal["status"] == "refused"
    assert refusal["projected_epsilon"] > CAP_NODE0.epsilon
    assert "cap" in refusal["reason"] or "budget" in refusal["reason"]
    # the refusal is itself a signed ledger entry (after node-0's policy, its one spend and that
    # spend's commit); spending stays at one round
    assert refusal["ledger_head"]["count"] == 4
    assert second["node-1"]["status"] == second["node-2"]["status"] == "ok"


def test_ledger_heads_are_recorded_per_round(two_round_run):
    rounds = read_metrics(two_round_run)
    for rnd in (1, 2):
        heads = {c["node"]: c["ledger_head"] for c in rounds[rnd]["clients"]}
        # policy, then per round: the spend (the head a reply names) and its commit
        assert all(h["count"] == 2 * rnd and len(h["hash"]) == 64 for h in heads.values()), heads


def test_report_of_the_real_run_holds_the_right_numbers(two_round_run, tmp_path):
    from fedmodel.report import build_report

    files = build_report(two_round_run, tmp_path / "report")
    report = json.loads(files.json.read_text())
    clients = {c["node"]: c for c in report["clients"]}
    last = {c["node"]: c for c in read_metrics(two_round_run)[2]["clients"]}
    for node in ("node-1", "node-2"):
        assert clients[node]["epsilon"] == pytest.approx(last[node]["epsilon"], rel=1e-9)
        assert clients[node]["crosscheck"]["within_tolerance"]
        assert clients[node]["cap"]["epsilon"] == 3.5
        assert clients[node]["remaining_epsilon"] == pytest.approx(3.5 - last[node]["epsilon"])
    node0 = clients["node-0"]
    assert node0["cap"]["epsilon"] == CAP_NODE0.epsilon
    assert [r["round"] for r in node0["refusals"]] == [2]
    assert node0["remaining_epsilon"] == pytest.approx(CAP_NODE0.epsilon - node0["epsilon"])
    assert not node0["budget_exceeded"] and not report["any_budget_exceeded"]
    assert files.pdf.read_bytes().startswith(b"%PDF")
