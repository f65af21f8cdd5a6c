"""The server evaluates only on data it owns; sites evaluate their own rows, noised and charged.

The DP review found the server evaluating every round on the heart hospitals' own held-out rows,
which it held in simulation. Now a natural (per-site) partition's test rows are never the
server's: by default it does not evaluate on them, federated evaluation has each site release
noised counts through its spend door, and the oracle that evaluates on them anyway is a
simulation-only choice that the run records as such.
"""

from __future__ import annotations

import json

import pytest

from fedmodel.config import ConfigError
from fedmodel.privacy.ledger import verify_ledger
from fedmodel.scenarios import apply_overrides, load_scenario
from server.federation import server_evaluation
from server.records import read_metrics
from tests.federation.helpers import run


def heart(**overrides):
    return apply_overrides(
        load_scenario("heart-hospitals"),
        {"federation.rounds": 1, "train.epochs": 1, **overrides},
        "test",
    )


@pytest.fixture(scope="module")
def federated_run(tmp_path_factory):
    cfg = heart(**{"evaluation.server": "auto", "evaluation.federated": True})
    return run(cfg, tmp_path_factory.mktemp("eval") / "run")


def test_the_server_never_evaluates_on_site_rows(federated_run):
    info = json.loads((federated_run / "run.json").read_text())
    assert info["evaluation"]["server"] == "none"
    rounds = read_metrics(federated_run)
    assert all(r["server"] == {} for r in rounds), [r["server"] for r in rounds]


def test_sites_evaluate_their_own_rows_noised_and_charged(federated_run):
    last = read_metrics(federated_run)[-1]
    federated = last["federated"]
    assert federated["num_sites"] == 4 and federated["noised"] is True
    assert 0.0 <= federated["accuracy"] <= 1.0
    for k in range(4):
        ledger = verify_ledger(federated_run / "nodes" / f"node-{k}" / "ledger")
        (release,) = [e for e in ledger.entries if e.kind == "release"]
        assert release.releases == ("eval-counts",) and release.history == ((8.0, 1.0, 1),)
        # the run's target epsilon covered the training and this release together
        spends = [e for e in ledger.entries if e.spends]
        assert spends[-1].epsilon <= 1.0 + 1e-9


def test_where_the_server_may_evaluate():
    natural, mnist = heart(), load_scenario("mnist-cnn")
    assert server_evaluation(heart(**{"evaluation.server": "auto"}), "simulation") == "none"
    assert server_evaluation(mnist, "deployment") == "public"  # MNIST's own public test split
    assert server_evaluation(natural, "simulation") == "oracle"  # the scenario asks, marked
    with pytest.raises(ConfigError, match="oracle evaluates on site rows: simulation only"):
        server_evaluation(natural, "deployment")
    with pytest.raises(ConfigError, match="test rows are the sites' own"):
        server_evaluation(heart(**{"evaluation.server": "public"}), "simulation")
