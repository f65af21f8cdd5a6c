"""``fedmodel audit privacy`` on a real simulated run, and the report chapter it feeds.

One tiny Flower simulation (breast-cancer table, 2 sites, 1 round of DP-SGD) per module; every
test audits its own copy, so files written by one test never reach another.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedmodel.cli.audit_cmd import app
from fedmodel.privacy.audit import PRIVACY_AUDIT_FILE
from fedmodel.report.build import build_report
from fedmodel.report.view import PRIVACY_AUDIT_ABSENT
from tests.federation.helpers import run, small_tabular

runner = CliRunner()
CANARY_ARGS = ("--canaries", "200", "--k-plus", "40")


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> Path:
    return run(small_tabular("fedavg"), tmp_path_factory.mktemp("audit-sim") / "run")


@pytest.fixture
def run_dir(simulated: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(simulated, target)
    return target


def _audit(run_dir: Path, *args: str):
    return runner.invoke(app, ["privacy", str(run_dir), *args])


def _record(run_dir: Path) -> dict:
    return json.loads((run_dir / PRIVACY_AUDIT_FILE).read_text())


def test_mia_only_writes_the_membership_figures(run_dir: Path) -> None:
    result = _audit(run_dir, "--mia-only")
    assert result.exit_code == 0, result.output
    record = _record(run_dir)
    info = json.loads((run_dir / "run.json").read_text())
    assert (record["run_id"], record["model_hash"]) == (info["run_id"], info["model_hash"])
    assert record["site"]["node"] == "node-0" and record["canary_audits"] == []
    assert record["mechanism"]["noise_multiplier"] == 1.0
    assert record["mechanism"]["sample_rate"] == 0.125 and record["mechanism"]["steps"] == 8
    mia = record["membership_inference"]
    assert mia["members"] == mia["non_members"] > 0
    assert {a["attack"] for a in mia["attacks"]} == {"loss", "calibrated"}
    assert all(0 <= a["auc"] <= 1 and 0 <= a["tpr_at_fpr"] <= 1 for a in mia["attacks"])
    assert "loss: AUC" in result.stdout and PRIVACY_AUDIT_FILE in result.stdout


def test_canary_audit_and_its_no_noise_control(run_dir: Path) -> None:
    assert _audit(run_dir, *CANARY_ARGS).exit_code == 0
    assert _audit(run_dir, *CANARY_ARGS, "--no-noise").exit_code == 0
    result = _audit(run_dir, "--mia-only")  # keeps both canary results of this run and site
    assert result.exit_code == 0, result.output
    audits = {a["noise_off"]: a for a in _record(run_dir)["canary_audits"]}
    dp, off = audits[False], audits[True]
    for audit in (dp, off):
        assert (audit["canaries"], audit["guesses"], audit["delta"]) == (200, 40, 1e-5)
        assert audit["sample_rate"] == 0.125 and audit["steps"] == 8
    assert dp["epsilon_accounted"] == off["epsilon_accounted"] == pytest.approx(3.185, abs=1e-3)
    assert dp["epsilon_lower_bound"] <= dp["epsilon_accounted"] and not dp["refutes_claim"]
    assert off["correct"] == 40 and off["epsilon_lower_bound"] > dp["epsilon_lower_bound"] + 1.5
    assert "noise off (control)" in result.stdout


def _without_model(run_dir: Path) -> Path:
    shutil.rmtree(run_dir / "model")
    return run_dir


def _unfinished(run_dir: Path) -> Path:
    info = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**info, "status": "running"}))
    return run_dir


@pytest.mark.parametrize(
    ("make", "args", "message"),
    [
        (lambda d: d / "missing", (), "no such run folder"),
        (lambda d: (d / "scenario.toml").unlink() or d, (), "not a run folder"),
        (_without_model, (), "no final model"),
        (_unfinished, (), "audit a finished run"),
        (lambda d: d, ("--node", "node-7"), "--node node-7: no such site"),
        (lambda d: d, ("--canaries", "10", "--k-plus", "11"), "k+ (11)"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(run_dir: Path, make, args, message: str) -> None:
    target = make(run_dir)
    result = _audit(target, *args)
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.output
    assert not (run_dir / PRIVACY_AUDIT_FILE).exists()  # nothing half-written


def test_report_shows_membership_inference_and_canary_figures(run_dir: Path, tmp_path) -> None:
    before = build_report(run_dir, tmp_path / "before")
    assert before.report.privacy_audit is None
    assert PRIVACY_AUDIT_ABSENT.split(":")[0] in before.html.read_text()

    assert _audit(run_dir, *CANARY_ARGS).exit_code == 0
    files = build_report(run_dir, tmp_path / "after")
    audit = files.report.privacy_audit
    assert audit is not None and audit.node == "node-0" and audit.matches_run
    site = next(c for c in files.report.clients if c.node == "node-0")
    assert audit.epsilon_site == site.epsilon and audit.tpr_bound is not None
    canary = audit.canaries[0]
    assert canary.epsilon_accounted == pytest.approx(site.epsilon, rel=1e-6)
    html = files.html.read_text()
    assert "8. Empirical privacy audit" in html
    assert "Membership inference on node-0" in html and "calibrated" in html
    assert "Canary audit of node-0" in html and f"{canary.correct} / 40" in html
    assert "consistent" in html and files.pdf.stat().st_size > 0
    saved = json.loads(files.json.read_text())["privacy_audit"]
    assert saved["canaries"][0]["epsilon_lower_bound"] == canary.epsilon_lower_bound
    assert not any("privacy-audit" in w or "canary" in w for w in files.report.warnings)


def test_report_warns_when_the_audit_refutes_the_accountant(run_dir: Path, tmp_path) -> None:
    assert _audit(run_dir, *CANARY_ARGS).exit_code == 0
    record = _record(run_dir)
    record["canary_audits"][0]["epsilon_lower_bound"] = 9.0  # what broken noise would show
    record["run_id"] = "another-run"
    (run_dir / PRIVACY_AUDIT_FILE).write_text(json.dumps(record))
    files = build_report(run_dir, tmp_path / "report")
    warnings = " | ".join(files.report.warnings)
    assert "does not hold" in warnings and "another run" in warnings
    assert "REFUTED" in files.html.read_text()


def test_report_survives_a_malformed_audit_file(run_dir: Path, tmp_path) -> None:
    (run_dir / PRIVACY_AUDIT_FILE).write_text("{not json")
    files = build_report(run_dir, tmp_path / "report")
    assert files.report.privacy_audit is None
    assert any("malformed" in w for w in files.report.warnings)
