"""Central (client-level) DP through Flower's wrapper, accounted under the stated relation.

The epsilon is recomputed here with Google's dp-accounting directly (not through Flower or the
server's code), and the noise is measured on the model: a uniform mean of updates clipped to C
has norm <= C, so a round whose global model moved far more than C can only have moved by the
Gaussian noise. The noise on the mean is sigma*C/m; one site's update moves the sum by at most C
when it is added or removed, by up to 2C when it is replaced, so replace-one (the default: the
sites are a fixed, named set) is the Gaussian mechanism at sigma/2.
"""

from __future__ import annotations

import json
import math
import shutil

import dp_accounting
import pytest
import torch
from typer.testing import CliRunner

from fedmodel.cli.main import app
from fedmodel.config import ConfigError
from fedmodel.data import load_dataset
from fedmodel.models import build_model
from fedmodel.report.collect import collect_report
from fedmodel.report.html import render_html
from fedmodel.report.view import central_dp_table
from fedmodel.scenarios import apply_overrides, load_scenario, scenario_to_toml
from fedmodel.simulation import simulate
from fedmodel.training.checkpoint import load_weights
from server import central_dp
from server.federation import resume_settings
from server.records import read_metrics
from tests.federation.helpers import run, small_tabular

NOISE, CLIP, DELTA = 1.0, 0.5, 1e-3
SENSITIVITY = {"add-remove": 1.0, "replace-one": 2.0}  # of the sum, in units of C


def central(rounds: int = 1, **extra):
    return apply_overrides(
        small_tabular("fedavg"),
        {
            "federation.rounds": rounds,
            "central_dp.enabled": True,
            "central_dp.noise_multiplier": NOISE,
            "central_dp.clipping_norm": CLIP,
            "central_dp.delta": DELTA,
            **extra,
        },
        "test",
    )


def gaussian_epsilon(releases: int, relation: str = "replace-one", noise: float = NOISE,
                     delta: float = DELTA) -> float:  # fmt: skip
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(dp_accounting.GaussianDpEvent(noise / SENSITIVITY[relation]), releases)
    return acc.get_epsilon(delta)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One round under the default relation (replace-one), kept as ``first``; the same run then
    resumed for a second round stating add-remove. Two relations for one run's cost.
    Returns (cfg, first_dir, resumed_dir, [run.json central_dp after each])."""
    root = tmp_path_factory.mktemp("central")
    cfg = central(rounds=1)
    run_dir = run(cfg, root / "run")
    first = shutil.copytree(run_dir, root / "first")
    infos = [json.loads((run_dir / "run.json").read_text())["central_dp"]]
    settings = resume_settings(run_dir)
    settings.scenario = apply_overrides(
        settings.scenario,
        {"federation.rounds": 2, "central_dp.neighbouring": "add-remove"},
        "test",
    )
    simulate(settings)
    infos.append(json.loads((run_dir / "run.json").read_text())["central_dp"])
    return cfg, first, run_dir, infos


def test_central_dp_noises_the_mean_accounts_each_round_and_resumes(runs):
    cfg, first_dir, run_dir, (first, second) = runs
    assert first["rounds"] == 1 and first["num_sampled_clients"] == 2
    assert first["neighbouring"] == "replace-one" and first["sensitivity"] == "2C/m"
    assert first["epsilon"] == pytest.approx(gaussian_epsilon(1), rel=1e-9)

    # the mean of two updates clipped to 0.5 moves <= 0.5; noise of stdev NOISE*CLIP/2 per
    # weight moves it by about that times sqrt(#weights)
    torch.manual_seed(cfg.train.seed)
    splits = load_dataset(cfg.data)
    initial = build_model(cfg.model, tuple(splits.input_shape), splits.num_classes).state_dict()
    after, _ = load_weights(run_dir / "checkpoints" / "round-0001.safetensors")
    moved = torch.cat([(after[k] - initial[k]).flatten() for k in initial])
    expected = NOISE * CLIP / 2 * math.sqrt(moved.numel())
    assert 0.8 * expected < moved.norm().item() < 1.2 * expected + CLIP

    # resumed stating add-remove: the log holds the noise as applied, so both releases are
    # restated under the new relation, not only the second
    assert second["rounds"] == 2 and second["neighbouring"] == "add-remove"
    assert second["sensitivity"] == "C/m"
    assert second["epsilon"] == pytest.approx(gaussian_epsilon(2, "add-remove"), rel=1e-9)
    assert [c["status"] for c in read_metrics(run_dir)[2]["clients"]] == ["ok", "ok"]

    # the compliance report shows it apart from the record-level figures, cross-checked
    for folder, info, relation in ((first_dir, first, "replace-one"),
                                   (run_dir, second, "add-remove")):  # fmt: skip
        report = collect_report(folder)
        shown = report.central_dp
        assert shown.used and shown.epsilon == pytest.approx(info["epsilon"])
        assert shown.neighbouring == relation and shown.records_agree
        assert shown.crosscheck is not None and shown.crosscheck.within_tolerance
        assert "accountant_state" not in shown.settings
        assert _central_findings(report) == []
        rows = dict(central_dp_table(report).rows)
        assert rows["Neighbouring relation"].startswith(relation)


def _central_findings(report) -> list[str]:
    return [w for w in report.warnings if w.startswith("central DP")]


def test_the_report_compares_the_recorded_central_epsilon(runs, tmp_path):
    """A recorded epsilon the settings do not give is a finding, not 'within tolerance'."""
    run_dir = shutil.copytree(runs[1], tmp_path / "run")
    report = collect_report(run_dir)
    assert _central_findings(report) == [] and central_dp_table(report).flagged == []

    info = json.loads((run_dir / "run.json").read_text())
    info["central_dp"]["epsilon"] = 999.0
    (run_dir / "run.json").write_text(json.dumps(info))
    report = collect_report(run_dir)
    findings = _central_findings(report)
    assert len(findings) == 1 and "999" in findings[0], report.warnings
    assert f"{gaussian_epsilon(1):.4g}" in findings[0]
    assert central_dp_table(report).flagged, "the recorded-epsilon row is drawn as an alert"
    assert "999" in render_html(report, {"epsilon": b"", "accuracy": b""})


@pytest.mark.parametrize(("relation", "expected"), [("add-remove", 8.07), ("replace-one", 21.9)])
def test_heart_settings_give_the_reviewed_figures(relation, expected):
    """The heart scenario's central_dp (noise 1.0, clip 0.5, delta 1e-2, 4 sites, 5 rounds)."""
    heart = apply_overrides(
        load_scenario("heart-hospitals"),
        {"central_dp.enabled": True, "central_dp.neighbouring": relation},
        "test",
    )
    cdp = heart.central_dp
    assert (cdp.noise_multiplier, cdp.clipping_norm, cdp.delta) == (1.0, 0.5, 1e-2)
    assert (heart.federation.num_clients, heart.federation.rounds) == (4, 5)
    epsilon = central_dp.projected_epsilon(heart, central_dp.new_accountant(heart), 5)
    assert epsilon == pytest.approx(gaussian_epsilon(5, relation, 1.0, 1e-2), rel=1e-9)
    assert round(epsilon, 2 if expected < 10 else 1) == expected


def test_the_budget_check_uses_the_stated_relation():
    """A cap between the two figures: replace-one is refused, add-remove may run."""
    cap = gaussian_epsilon(3, "replace-one") * 0.99
    assert cap > gaussian_epsilon(3, "add-remove")
    for relation, refused in (("add-remove", False), ("replace-one", True)):
        cfg = central(rounds=3, **{"central_dp.max_epsilon": cap,
                                   "central_dp.neighbouring": relation})  # fmt: skip
        if refused:
            with pytest.raises(ConfigError, match="replace-one"):
                central_dp.check_budget(cfg, central_dp.new_accountant(cfg), 3)
        else:
            central_dp.check_budget(cfg, central_dp.new_accountant(cfg), 3)


def test_the_neighbouring_relation_is_one_of_two():
    with pytest.raises(ConfigError, match="neighbouring"):
        central(**{"central_dp.neighbouring": "swap-two"})


def test_a_run_past_max_epsilon_is_refused_before_any_round(tmp_path):
    over = gaussian_epsilon(3) * 0.99  # the default relation: replace-one
    cfg = central(rounds=3, **{"central_dp.max_epsilon": over})
    with pytest.raises(ConfigError, match="max_epsilon"):
        run(cfg, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()

    path = tmp_path / "scenario.toml"
    path.write_text(scenario_to_toml(cfg))
    result = CliRunner().invoke(app, ["simulate", str(path), "--out", str(tmp_path / "cli")])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln]
    assert len(lines) == 1 and "central_dp" in lines[0] and "Traceback" not in result.output
    assert not (tmp_path / "cli").exists()


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"strategy.name": "fedmedian"}, "fedmedian"),
        ({"security.secure_aggregation": True}, "secure_aggregation"),
    ],
)
def test_central_dp_refuses_what_flower_cannot_account(overrides, problem):
    with pytest.raises(ConfigError, match=problem):
        central(**overrides)
