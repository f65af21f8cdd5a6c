"""``fedmodel train-local`` through typer's CliRunner: train, print, export; bad input exits 2."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from fedmodel.cli.train_local import train_local
from fedmodel.training.export import load_exported


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    cli = typer.Typer()
    cli.command()(train_local)
    return cli


def test_train_export_and_reload(app, tmp_path):
    config = tmp_path / "local.toml"
    config.write_text(
        '[data]\ndataset = "digits"\n[model]\nname = "mlp"\n'
        '[dp]\nnoise_multiplier = 1.0\naccountant = "rdp"\n[train]\nbatch_size = 128\n'
    )
    out = tmp_path / "model"
    result = CliRunner().invoke(
        app, ["--config", str(config), "--epochs", "2", "--lr", "0.2", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output and "epsilon (rdp)" in result.output
    _, meta = load_exported(out)
    assert meta["dataset"] == "digits" and meta["config"]["train"]["epochs"] == 2
    assert meta["metrics"]["train"]["steps"] == 2 * 12
    assert meta["metrics"]["test"]["num_examples"] == 359


def test_no_dp_flag(app):
    result = CliRunner().invoke(
        app, ["--dataset", "digits", "--model", "mlp", "--no-dp", "--train-limit", "300"]
    )
    assert result.exit_code == 0, result.output
    assert "differential privacy" in result.output and "epsilon" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config", "BAD"], "dp.delta"),
        (["--config", "MISSING"], "no such config file"),
        (["--epsilon", "3", "--noise-multiplier", "1"], "not both"),
        (["--epochs", "0"], "train.epochs"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(app, tmp_path, args, message):
    bad = tmp_path / "bad.toml"
    bad.write_text("[dp]\ndelta = 2.0\n")
    args = [
        str(bad) if a == "BAD" else str(tmp_path / "none.toml") if a == "MISSING" else a
        for a in args
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("error:")
