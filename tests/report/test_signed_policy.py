"""Caps and policy come from the sites' signed ledger entries, never from a loose node.toml.

A real two-run federation (two small tabular runs on the same two virtual sites): after the
first run node-0's operator lowers its cap below what it already spent and node-1 opts in to
sharing noised training metrics. In the second run each node signs its new policy before
deciding; node-0 refuses to train and to evaluate, node-1 trains and releases its noised metrics
and evaluation counts. The report of the second run must say node-0's budget is exceeded, and
keep saying so (with the signed cap) when node-0's node.toml is raised again afterwards.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fedmodel.config import PrivacyBudget
from fedmodel.privacy.ledger import verify_ledger
from fedmodel.report.build import build_report
from fedmodel.report.collect import collect_report
from fedmodel.scenarios import apply_overrides
from tests.federation.helpers import run, small_tabular

FIRST_CAP = 50.0
LOWERED_CAP = 2.0  # below node-0's epsilon after the first run (one round + one evaluation)
RAISED_CAP = 100.0


def _edit(node_toml: Path, old: str, new: str) -> None:
    text = node_toml.read_text()
    assert old in text, (old, text)
    node_toml.write_text(text.replace(old, new))


def _spent(nodes: Path, node: str) -> float:
    entries = verify_ledger(nodes / node / "ledger").entries
    return [e.epsilon for e in entries if e.spends][-1]


@pytest.fixture(scope="module")
def second_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("signed-policy")
    cfg = apply_overrides(small_tabular("fedavg"), {"evaluation.federated": True}, "t")
    cfg = cfg.model_copy(update={"budget": PrivacyBudget(epsilon=FIRST_CAP, delta=1e-5)})
    first = run(cfg, root / "first")
    second = root / "second"
    shutil.copytree(first / "nodes", second / "nodes")  # the same sites join a second run
    nodes = second / "nodes"
    assert _spent(nodes, "node-0") > LOWERED_CAP
    _edit(nodes / "node-0" / "node.toml", f"epsilon = {FIRST_CAP}", f"epsilon = {LOWERED_CAP}")
    _edit(
        nodes / "node-1" / "node.toml", "share_train_metrics = false", "share_train_metrics = true"
    )
    return run(cfg, second)


@pytest.fixture(scope="module")
def report(second_run: Path):
    return collect_report(second_run)


def test_a_cap_lowered_below_the_spend_is_signed_refused_and_reported_exceeded(report):
    nodes = {c.node: c for c in report.clients}
    low, ok = nodes["node-0"], nodes["node-1"]
    assert low.cap is not None and low.cap.epsilon == LOWERED_CAP
    assert low.budget_exceeded and report.any_budget_exceeded
    assert low.epsilon_against_cap > LOWERED_CAP
    assert low.verdict.startswith("budget exceeded: YES")
    assert low.cap_status == "signed" and "signed policy, ledger entry" in low.cap.source
    # the site refused both requests of the second run (train and evaluate), each signed
    assert [r.source for r in low.refusals] == ["ledger", "ledger"]
    assert low.rounds == [] and low.spends_past_cap_in_force == []
    assert not ok.budget_exceeded and ok.cap.epsilon == FIRST_CAP
    assert not any("node.toml" in w for w in report.warnings), report.warnings


def test_raising_node_toml_again_changes_nothing_but_is_named(second_run, tmp_path):
    run_dir = Path(shutil.copytree(second_run, tmp_path / "run"))
    node_toml = run_dir / "nodes" / "node-0" / "node.toml"
    _edit(node_toml, f"epsilon = {LOWERED_CAP}", f"epsilon = {RAISED_CAP}")
    report = collect_report(run_dir, [run_dir / "nodes"])  # node.toml: beside the site's own
    again = {c.node: c for c in report.clients}["node-0"]
    assert again.cap.epsilon == LOWERED_CAP, "the signed cap counts, not node.toml"
    assert again.budget_exceeded
    found = [w for w in report.warnings if "node.toml" in w]
    assert len(found) == 1 and f"{RAISED_CAP:g}" in found[0] and f"{LOWERED_CAP:g}" in found[0]


def test_what_left_each_site_is_derived_from_signed_entries(report):
    nodes = {c.node: c for c in report.clients}
    left = {v.what: v for v in nodes["node-1"].released}
    assert {"model-update", "train-metrics", "eval-counts"} <= set(left)
    assert {"accounting-parameters", "ledger-heads"} <= set(left)
    update, metrics, counts = left["model-update"], left["train-metrics"], left["eval-counts"]
    assert update.protection == "dp-sgd" and update.mechanism == "dp-sgd/poisson-gaussian"
    assert "record-level" in update.detail and "PRV" in update.detail
    assert metrics.protection == counts.protection == "gaussian"
    assert metrics.noise_multiplier == counts.noise_multiplier == 8.0
    assert metrics.entries == update.entries, "the metrics are charged with their round"
    assert counts.entries != update.entries and update.rounds == counts.rounds == [1]
    assert "reveals" in left["accounting-parameters"].detail  # n within a batch, stated
    assert not any(v.flagged for v in nodes["node-1"].released)
    refused = {v.what: v for v in nodes["node-0"].released}
    assert "model-update" not in refused and refused["refusals"].entries
    assert not any("released" in w for w in report.warnings), report.warnings


def test_policy_in_force_is_the_signed_one(report):
    nodes = {c.node: c for c in report.clients}
    assert nodes["node-1"].policy.policy["share_train_metrics"] is True
    assert nodes["node-0"].policy.cap_epsilon == LOWERED_CAP
    assert len(nodes["node-0"].policy_entries) == 2, "one per change, first run and second"


def test_evaluation_and_coverage_are_stated(second_run, tmp_path):
    files = build_report(second_run, tmp_path / "out")
    data = json.loads(files.json.read_text())
    assert data["evaluation"]["server"] == "public" and data["evaluation"]["federated"]
    (last,) = [r for r in data["rounds"] if r["round"] == 1]
    assert last["federated"]["noised"] is True and last["federated"]["num_sites"] == 1
    clients = {c["node"]: c for c in data["clients"]}
    assert clients["node-0"]["budget_exceeded"] is True
    assert clients["node-0"]["cap"]["epsilon"] == LOWERED_CAP
    assert "signed policy" in clients["node-0"]["cap"]["source"]
    assert {v["what"] for v in clients["node-1"]["released"]} >= {"model-update", "eval-counts"}
    html = files.html.read_text()
    for needle in (
        "What differential privacy covers",
        "add or remove one record at one site",
        "public test split",
        "What left each site",
        "signed policy, ledger entry",
    ):
        assert needle in html, needle
