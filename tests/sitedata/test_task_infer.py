"""`fedmodel task infer` drafts a task a person reviews; the sample it came from passes it."""

from __future__ import annotations

from typer.testing import CliRunner

from fedmodel.cli.main import app
from fedmodel.data.heart import write_heart_site_files
from fedmodel.scenarios import _dump_toml
from fedmodel.task import CategoricalColumn, NumericColumn, load_task

runner = CliRunner()


def test_a_draft_loads_and_its_sample_passes_the_check(tmp_path):
    files = write_heart_site_files(tmp_path / "sites")
    sample = files["hungary"][0]
    draft = tmp_path / "task.toml"
    argv = ["task", "infer", str(sample), "--label", "disease", "--id", "patient_id"]
    result = runner.invoke(app, [*argv, "--name", "heart-draft", "--out", str(draft)])
    assert result.exit_code == 0, result.output
    text = draft.read_text()
    assert text.startswith("# drafted by `fedmodel task infer`") and "REVIEW" in text
    task = load_task(draft)
    assert task.identifiers == ["patient_id"] and task.classes == ["0", "1"]
    assert "patient_id" not in task.columns and "disease" not in task.columns
    age = task.columns["age"]
    assert isinstance(age, NumericColumn) and (age.min, age.max) == (20.0, 70.0)
    assert isinstance(task.columns["sex"], CategoricalColumn)
    node = tmp_path / "node.toml"
    node.write_text(_dump_toml({"name": "hungary", "data": {"path": str(sample)}}))
    check = runner.invoke(app, ["data", "check", "--config", str(node), "--task", str(draft)])
    assert check.exit_code == 0, check.output
    again = runner.invoke(app, [*argv, "--out", str(draft)])
    assert again.exit_code == 2 and "never overwrites" in again.output


def test_a_label_the_sample_lacks_is_one_line(tmp_path):
    sample = tmp_path / "s.csv"
    sample.write_text("a,b\n1,2\n")
    result = runner.invoke(app, ["task", "infer", str(sample), "--label", "y"])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {sample}: no label column 'y'"
