"""One run folder and one report per test session: building them costs the accountants' time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fedmodel.cli.report_cmd import report
from fedmodel.report.build import ReportFiles, build_report
from tests.report.runfolder import build_run_dir

REPORT_FILES = (
    "report.html",
    "report.pdf",
    "report.json",
    "plots/epsilon.png",
    "plots/accuracy.png",
)


def cli() -> typer.Typer:
    """``report`` alone, as the lead's app registers it, without importing every command."""
    app = typer.Typer(pretty_exceptions_enable=False)
    app.command("report")(report)
    app.command("noop", hidden=True)(lambda: None)  # two commands keep "report" a subcommand
    return app


def invoke(*args: str):
    return CliRunner().invoke(cli(), ["report", *args])


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    return build_run_dir(tmp_path_factory.mktemp("report-run"))


@pytest.fixture(scope="session")
def built(run_dir: Path, tmp_path_factory) -> ReportFiles:
    """The report, built once through the API (the CLI's success path reuses it)."""
    return build_report(run_dir, tmp_path_factory.mktemp("report-out") / "report")


@pytest.fixture(scope="session")
def out_dir(built: ReportFiles) -> Path:
    return built.json.parent


@pytest.fixture(scope="session")
def report_json(out_dir: Path) -> dict:
    return json.loads((out_dir / "report.json").read_text())


@pytest.fixture(scope="session")
def clients(report_json: dict) -> dict[str, dict]:
    return {c["node"]: c for c in report_json["clients"]}
