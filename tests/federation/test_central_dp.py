"""Central (client-level) DP through Flower's wrapper and accountant, on real simulations.

The epsilon is recomputed here with Google's dp-accounting directly (not through Flower), and the
noise is measured on the model: a uniform mean of updates clipped to C has norm <= C, so a round
whose global model moved far more than C can only have moved by the Gaussian noise.
"""

from __future__ import annotations

import json
import math

import dp_accounting
import pytest
import torch
from typer.testing import CliRunner

from fedmodel.cli.main import app
from fedmodel.config import ConfigError
from fedmodel.data import load_dataset
from fedmodel.models import build_model
from fedmodel.report.collect import central_dp as report_central_dp
from fedmodel.report.runfolder import read_run
from fedmodel.scenarios import apply_overrides, scenario_to_toml
from fedmodel.training.checkpoint import load_weights
from server.federation import resume_settings
from server.records import read_metrics
from server.simulate import simulate
from tests.federation.helpers import run, small_tabular

NOISE, CLIP, DELTA = 1.0, 0.5, 1e-3


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


def gaussian_epsilon(releases: int) -> float:
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(dp_accounting.GaussianDpEvent(NOISE), releases)
    return acc.get_epsilon(DELTA)


def test_central_dp_noises_the_mean_accounts_each_round_and_resumes(tmp_path):
    cfg = central(rounds=1)
    run_dir = run(cfg, tmp_path / "run")

    info = json.loads((run_dir / "run.json").read_text())["central_dp"]
    assert info["rounds"] == 1 and info["num_sampled_clients"] == 2
    assert info["epsilon"] == pytest.approx(gaussian_epsilon(1), rel=1e-9)

    # the mean of two updates clipped to 0.5 moves <= 0.5; noise of stdev NOISE*CLIP/2 per
    # weight moves it by about that times sqrt(#weights)
    torch.manual_seed(cfg.train.seed)
    splits = load_dataset(cfg.data)
    initial = build_model(cfg.model, tuple(splits.input_shape), splits.num_classes).state_dict()
    after, _ = load_weights(run_dir / "checkpoints" / "round-0001.safetensors")
    moved = torch.cat([(after[k] - initial[k]).flatten() for k in initial])
    expected = NOISE * CLIP / 2 * math.sqrt(moved.numel())
    assert 0.8 * expected < moved.norm().item() < 1.2 * expected + CLIP

    settings = resume_settings(run_dir)
    settings.scenario = apply_overrides(settings.scenario, {"federation.rounds": 2}, "test")
    simulate(settings)
    info = json.loads((run_dir / "run.json").read_text())["central_dp"]
    assert info["rounds"] == 2
    assert info["epsilon"] == pytest.approx(gaussian_epsilon(2), rel=1e-9)
    assert [c["status"] for c in read_metrics(run_dir)[2]["clients"]] == ["ok", "ok"]

    # the compliance report shows it apart from the record-level figures, cross-checked
    shown = report_central_dp(read_run(run_dir), 0.02)
    assert shown.used and shown.epsilon == pytest.approx(info["epsilon"])
    assert shown.crosscheck is not None and shown.crosscheck.within_tolerance
    assert "accountant_state" not in shown.settings


def test_a_run_past_max_epsilon_is_refused_before_any_round(tmp_path):
    over = gaussian_epsilon(3) * 0.99
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
