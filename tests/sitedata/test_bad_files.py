"""Bad site files: every kind of mismatch is one line naming the file, the column and the first
bad row (``fedmodel data check`` exits 2 and writes nothing); in a run the same file is a signed
refusal that names only the task's column, and nothing is spent."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedmodel.cli.main import app
from fedmodel.privacy.ledger import verify_ledger
from fedmodel.scenarios import _dump_toml, apply_overrides
from fedmodel.task import TaskConfig
from server import wire
from tests.federation.helpers import small_tabular
from tests.nodebench import NodeBench, reply_kind

runner = CliRunner()

TASK = {
    "name": "clinic",
    "kind": "tabular",
    "label": "outcome",
    "classes": ["no", "yes"],
    "identifiers": ["mrn"],
    "columns": {
        "age": {"type": "numeric", "min": 0, "max": 120},
        "weight": {"type": "numeric", "min": 1, "max": 400, "missing": "refuse"},
        "sex": {"type": "categorical", "categories": ["F", "M"]},
        "smoker": {"type": "boolean"},
    },
}
HEADER = "mrn,age,weight,sex,smoker,outcome"
GOOD = ["A-1,30,70,F,yes,no", "A-2,41,82,M,no,yes", "A-3,55,90,M,,yes", "A-4,?,60,F,true,no"]

# (what is wrong, the file's text, the column named, the row named: 1-based data row)
BAD: list[tuple[str, str, str | None, int | None]] = [
    ("missing column", "mrn,age,sex,smoker,outcome\nA-1,30,F,yes,no\n", "weight", None),
    ("extra column", HEADER + ",zip\n" + "A-1,30,70,F,yes,no,12345\n", "zip", None),
    ("not a number", "\n".join([HEADER, *GOOD[:2], "A-9,thirty,70,F,no,no"]), "age", 3),
    ("out of range", "\n".join([HEADER, *GOOD, "A-9,130,70,F,no,no"]), "age", 5),
    ("undeclared category", "\n".join([HEADER, *GOOD[:1], "A-9,30,70,X,no,no"]), "sex", 2),
    ("label outside classes", "\n".join([HEADER, *GOOD[:3], "A-9,30,70,F,no,maybe"]), "outcome", 4),
    ("missing label", "\n".join([HEADER, "A-9,30,70,F,no,", *GOOD]), "outcome", 1),
    ("missing where refused", "\n".join([HEADER, *GOOD[:2], "A-9,30,?,F,no,no"]), "weight", 3),
    ("not a boolean", "\n".join([HEADER, *GOOD[:1], "A-9,30,70,F,sometimes,no"]), "smoker", 2),
    ("negative out of range", "\n".join([HEADER, *GOOD, "A-9,30,0.5,F,no,no"]), "weight", 5),
    ("no rows", HEADER + "\n", None, None),
    ("malformed row", "\n".join([HEADER, *GOOD, "A-9,30,70"]), None, None),
]


def _node(folder: Path, data: Path, **extra) -> Path:
    node = folder / "node.toml"
    table = {"path": str(data), **extra}
    node.write_text(_dump_toml({"name": "clinic-a", "data": table}))
    return node


def _task(folder: Path) -> Path:
    path = folder / "task.toml"
    path.write_text(_dump_toml({"task": TaskConfig.model_validate(TASK).model_dump(
        mode="json", exclude_none=True)}))  # fmt: skip
    return path


def _check(node: Path, task: Path):
    return runner.invoke(app, ["data", "check", "--config", str(node), "--task", str(task)])


def test_a_good_file_passes_the_check(tmp_path):
    data = tmp_path / "clinic.csv"
    data.write_text("\n".join([HEADER, *GOOD * 3]) + "\n")
    result = _check(_node(tmp_path, data, test_fraction=0.25), _task(tmp_path))
    assert result.exit_code == 0, result.output
    assert "match task 'clinic'" in result.output


@pytest.mark.parametrize(("what", "text", "column", "row"), BAD, ids=[b[0] for b in BAD])
def test_each_bad_file_is_one_line_naming_file_column_and_row(tmp_path, what, text, column, row):
    data = tmp_path / "clinic.csv"
    data.write_text(text)
    node, task = _node(tmp_path, data), _task(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = _check(node, task)
    assert result.exit_code == 2, (what, result.output)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, (what, lines)
    line = lines[0]
    assert line.startswith(f"error: {data}"), line
    if column is not None:
        assert f"column {column!r}" in line, line
    if row is not None:
        assert f"row {row}:" in line, line
    assert "A-9" not in line and "A-1" not in line  # rows by number, never by content
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # the check writes nothing


def test_a_mapping_to_a_column_the_file_lacks_and_a_missing_file(tmp_path):
    data = tmp_path / "clinic.csv"
    data.write_text("\n".join([HEADER, *GOOD]))
    result = _check(_node(tmp_path, data, columns={"years": "age"}), _task(tmp_path))
    assert result.exit_code == 2 and "mapped from 'years'" in result.output
    result = _check(_node(tmp_path, tmp_path / "gone.csv"), _task(tmp_path))
    assert result.exit_code == 2 and "no such file" in result.output


def test_every_problem_of_a_file_is_listed_once(tmp_path):
    data = tmp_path / "clinic.csv"
    data.write_text("\n".join([HEADER, "A-9,300,70,X,maybe,no", "A-8,301,71,Y,perhaps,no"]))
    result = _check(_node(tmp_path, data), _task(tmp_path))
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 3, lines  # age, sex, smoker: first row each


def test_in_a_run_a_bad_file_is_a_signed_refusal_naming_only_the_column(tmp_path):
    task = TaskConfig.model_validate(TASK)
    scenario = small_tabular("fedavg").model_copy(update={"task": task})
    scenario = apply_overrides(scenario, {"security.sealed_updates": True}, "t")
    bench = NodeBench.create(tmp_path, scenario, input_shape=task.input_shape, num_classes=2)
    data = tmp_path / "clinic.csv"
    data.write_text("\n".join([HEADER, *GOOD * 10, "A-9,30,70,F,no,maybe"]))
    node_file = bench.node_file(0)
    cfg = tomllib.loads(node_file.read_text())
    cfg["data"] = {"path": str(data)}
    node_file.write_text(_dump_toml(cfg))
    reply = bench.run(bench.request("run-bad", 1))
    assert reply_kind(reply) == "refusal"
    reason = reply[wire.REFUSAL]["reason"]
    assert reason.startswith("site data does not match task 'clinic' (column 'outcome')"), reason
    assert str(data) not in reason and "maybe" not in reason and "row" not in reason
    assert bench.spends() == []
    ledger = verify_ledger(bench.nodes / "node-0" / "ledger")
    assert ledger.ok and ledger.entries[-1].kind == "refusal"

    data.write_text("\n".join([HEADER, *GOOD * 10]))  # the site fixes its export
    assert reply_kind(bench.run(bench.request("run-good", 1))) == "update"
