"""Resume continues from the saved weights; every strategy completes a round; bad scenarios."""

from __future__ import annotations

import json

import pytest
from flwr.app import ArrayRecord
from typer.testing import CliRunner

from fedmodel.cli.main import app
from fedmodel.scenarios import apply_overrides
from fedmodel.simulation import simulate
from fedmodel.training.checkpoint import load_weights
from server.federation import arrays_sha256, resume_settings
from server.records import read_metrics
from tests.federation.helpers import run, small_tabular


def test_resume_continues_at_round_two_with_saved_weights(tmp_path):
    run_dir = tmp_path / "run"
    run(small_tabular("fedavg"), run_dir)
    state, meta = load_weights(run_dir / "checkpoints" / "round-0001.safetensors")
    assert meta["round"] == 1

    settings = resume_settings(run_dir)
    settings.scenario = apply_overrides(settings.scenario, {"federation.rounds": 2}, "test")
    simulate(settings)

    info = json.loads((run_dir / "run.json").read_text())
    assert info["resumed_from"][0]["round"] == 1
    assert info["resumed_from"][0]["weights_sha256"] == arrays_sha256(ArrayRecord(state))
    rounds = read_metrics(run_dir)
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert info["run_id"] == meta["run_id"]
    # the nodes' ledgers continued: policy, round 1 and its commit, then round 2's spend
    assert all(c["ledger_head"]["count"] == 4 for c in rounds[2]["clients"])
    assert (run_dir / "checkpoints" / "round-0002.safetensors").is_file()


# FedAvg runs in nearly every simulation test, FedProx's mu in the signed-request tests, and the
# robust rules in tests/robust (one simulation, five federations): make test keeps FedAdam (its
# float64 aggregate regression) and leaves the separate runs to make test-all.
ROBUST_ELSEWHERE = COVERED_ELSEWHERE = pytest.mark.slow


@pytest.mark.parametrize(
    "strategy",
    [
        pytest.param("fedavg", marks=COVERED_ELSEWHERE),
        pytest.param("fedprox", marks=COVERED_ELSEWHERE),
        "fedadam",
        pytest.param("fedmedian", marks=ROBUST_ELSEWHERE),
        pytest.param("fedtrimmedavg", marks=ROBUST_ELSEWHERE),
        pytest.param("krum", marks=ROBUST_ELSEWHERE),
    ],
)
def test_each_strategy_completes_a_round(tmp_path, strategy):
    clients = 3 if strategy == "krum" else 2
    # FedAdam gets a second round: its float64 aggregate must not fail the next round's checks
    rounds = 2 if strategy == "fedadam" else 1
    cfg = apply_overrides(
        small_tabular(strategy, clients=clients), {"federation.rounds": rounds}, "t"
    )
    run_dir = run(cfg, tmp_path / "run")
    metrics = read_metrics(run_dir)
    assert metrics[-1]["round"] == rounds
    for row in metrics[1:]:
        assert [c["status"] for c in row["clients"]] == ["ok"] * clients, row["clients"]
    assert metrics[-1]["server"]["accuracy"] > 0.5


def test_bad_scenario_file_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[federation]\nnum_clients = "many"\n')
    result = CliRunner().invoke(app, ["simulate", str(bad)])
    assert result.exit_code == 2
    lines = [ln for ln in result.output.strip().splitlines() if ln]
    assert len(lines) == 1 and "federation.num_clients" in lines[0], result.output
    assert "Traceback" not in result.output

    bad.write_text("[federation\n")
    result = CliRunner().invoke(app, ["simulate", str(bad)])
    assert result.exit_code == 2 and "malformed TOML" in result.output

    result = CliRunner().invoke(app, ["simulate", "no-such-scenario"])
    assert result.exit_code == 2 and "no-such-scenario" in result.output


@pytest.mark.slow  # ~15 s run; refusals stay in tests/sealing
def test_a_run_in_which_every_site_refuses_fails_with_the_reasons(tmp_path):
    """Virtual nodes require DP-SGD by default: a no-DP scenario trains nothing. That is a
    failed run (exit 1, run.json ``failed``, no "final" model), with each site's reason shown
    as the round ends, not a finished one."""
    import json

    from fedmodel.scenarios import scenario_to_toml

    path = tmp_path / "nodp.toml"
    path.write_text(
        scenario_to_toml(apply_overrides(small_tabular("fedavg"), {"dp.enabled": False}, "t"))
    )
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(app, ["simulate", str(path), "--out", str(run_dir)])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())  # rich wraps long lines
    assert "round 1: node-0 refused: site policy requires DP" in text, result.output
    assert "round 1: node-1 refused: site policy requires DP" in text, result.output
    assert "warning: round 1: no site trained" in text, result.output
    assert "run failed: no site trained in any round" in text, result.output
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "failed" and info["model_hash"] is None
    assert "requires DP" in info["failure"]
    assert not (run_dir / "model").exists()
