"""One trained teacher run folder per test session (training it is the slow part)."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from fedmodel.cli.distill_cmd import distill
from fedmodel.cli.export_cmd import export
from fedmodel.cli.predict import predict
from fedmodel.training.footprint import cpu_threads
from tests.distill.teacher import TeacherRun, build_teacher_run


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One CPU thread: on a small shared machine two threads contend and run several times
    slower than one (150 CNN steps: 10 s on one thread, 59 s on two at load 18)."""
    with cpu_threads(1):
        yield


@pytest.fixture(scope="session")
def teacher(tmp_path_factory, one_thread) -> TeacherRun:
    return build_teacher_run(tmp_path_factory.mktemp("teacher"))


def invoke(*args: str):
    """The three commands as the lead's app registers them, without importing every command."""
    app = typer.Typer(pretty_exceptions_enable=False)
    app.command("export")(export)
    app.command("distill")(distill)
    app.command("predict")(predict)
    return CliRunner().invoke(app, list(args))


def one_error_line(result, message: str) -> None:
    """Exit 2 and a single ``error:`` line naming the problem, no traceback."""
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines
