"""What the report reads from the signed entries beyond the spend itself.

Sites whose ledgers were written through the real spend door (``tests/report/runfolder.py``):
deltas large for a site's rows (one allowed by a signed ``max_delta``, one allowed by nothing,
one at 1/n or more), a round a site's policy let train without DP before its operator set a cap,
a key rotation, a noised evaluation release and a policy change in the middle of a ledger, and a
metrics.jsonl that claims more left a site than its ledger says.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest

from fedmodel.crypto.keys import load_signing_key
from fedmodel.node_config import SitePolicy
from fedmodel.privacy.ledger import Ledger, verify_ledger
from fedmodel.privacy.rotation import rotate_signing_key
from fedmodel.privacy.spend import SiteRules, SpendPlan, commit, reserve
from fedmodel.report.build import build_report
from fedmodel.report.collect import collect_report
from fedmodel.report.model import ClientReport, Report
from tests.report.runfolder import DELTA, RUN_ID, Site, build_run_dir

FINDING_SITES = (
    Site("node-0", 500, None, delta=5e-4, policy={"max_delta": 1e-3}),  # allowed by the site
    Site("node-1", 500, None, delta=5e-4),  # above 1/(10 n) = 2e-4, and nothing allowed it
    Site("node-2", 400, None, delta=3e-3, policy={"max_delta": 5e-3}),  # >= 1/n = 2.5e-3
    Site("node-3", 800, 3.0, no_dp_rounds=(1,), policy={"require_dp": False}, cap_from=2),
)


@pytest.fixture(scope="module")
def findings_run(tmp_path_factory) -> Path:
    return build_run_dir(tmp_path_factory.mktemp("findings"), FINDING_SITES)


@pytest.fixture(scope="module")
def findings(findings_run) -> Report:
    return collect_report(findings_run)


def _clients(report: Report) -> dict[str, ClientReport]:
    return {c.node: c for c in report.clients}


def _bullets(report: Report, title: str) -> list[str]:
    return next(s for s in report.dpia if s.title == title).bullets


def test_a_delta_above_one_tenth_over_n_is_flagged_unless_the_signed_policy_allowed_it(findings):
    risks = _bullets(findings, "Residual risks")
    assert any(
        "node-1" in b and "above 1/(10 n)" in b and "no policy allowed it" in b for b in risks
    )
    assert any("node-0" in b and "allowed by the site's signed max_delta 0.001" in b for b in risks)
    assert any("node-2" in b and "not below 1/n" in b for b in risks), "1/n: flagged always"
    nodes = _clients(findings)
    assert [f.allowed_by for f in nodes["node-1"].delta_flags] == [None] * 3
    assert all("(ledger entry 0)" in str(f.allowed_by) for f in nodes["node-0"].delta_flags)
    assert all(f.at_least_one_over_n and f.allowed_by for f in nodes["node-2"].delta_flags)
    assert not any(f.at_least_one_over_n for f in nodes["node-0"].delta_flags)
    assert nodes["node-3"].delta_flags == []
    warned = [w for w in findings.warnings if "no signed max_delta allowed it" in w]
    assert len(warned) == 3 and all(w.startswith("node-1:") for w in warned)


def test_a_release_without_dp_is_unbounded_exceeds_a_later_cap_and_is_named(findings):
    node = _clients(findings)["node-3"]
    assert node.unbounded and math.isinf(node.epsilon_accounted)
    assert node.unprotected_rounds == [1] and node.rounds == [1]
    assert node.budget_exceeded and "unbounded" in node.verdict
    assert node.cap.epsilon == 3.0 and node.policy_entries == [0, 3], "cap signed at round 2"
    assert node.spends_past_cap_in_force == [], "no cap was in force when it trained"
    assert [r.round for r in node.refusals] == [2, 3]
    (bare,) = [v for v in node.released if v.what == "model-update"]
    assert bare.protection == "none" and bare.flagged and bare.rounds == [1]
    assert "accounting-parameters" not in {v.what for v in node.released}
    assert "released WITHOUT DP" in next(
        b for b in findings.coverage.bullets if b.startswith("node-3")
    )


@pytest.fixture
def rotated_run(run_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """node-1 rotates its key after the run, opts in to federated evaluation and releases
    noised evaluation counts for round 3: rotation, policy, release and commit entries."""
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    folder = run / "nodes" / "node-1"
    key = folder / "keys" / "signing.ed25519"
    registered = tmp_path / "registry"
    registered.mkdir()
    for node in ("node-0", "node-1", "node-2"):
        pub = run / "nodes" / node / "keys" / "signing.ed25519.pub"
        shutil.copy(pub, registered / f"{node}.ed25519.pub")
    rotate_signing_key(key, folder / "ledger", None)
    new_key = load_signing_key(key)
    ledger = Ledger(folder / "ledger", new_key)
    plan = SpendPlan(
        run_id=RUN_ID, round=3, history=((8.0, 1.0, 1),), releases=("eval-counts",),
        noise_multiplier=8.0, sample_rate=1.0, steps=1, max_grad_norm=5.0, delta=DELTA,
        dataset_size=200, kind="release", mechanism="gaussian/counts",
    )  # fmt: skip
    rules = SiteRules(cap=None, policy=SitePolicy(share_eval_metrics=True).model_dump(mode="json"))
    reserved = reserve(ledger, plan, rules, seed_secret=new_key.private_bytes_raw())
    commit(ledger, reserved, "ab" * 32)
    return run, registered


def test_rotation_policy_release_and_commit_entries_are_never_rounds_or_refusals(
    rotated_run, built
):
    run, registry = rotated_run
    kinds = [e.kind for e in verify_ledger(run / "nodes" / "node-1" / "ledger").entries]
    assert {"rotation", "policy", "release", "commit"} <= set(kinds)
    before = _clients(built.report)["node-1"]
    for report in (collect_report(run), collect_report(run, registered_keys=registry)):
        node = _clients(report)["node-1"]
        assert node.rounds == [1, 2, 3] and node.refusals == [] and node.failures == []
        assert node.steps == before.steps and node.noise_multipliers == [1.1]
        assert node.policy_entries == [0, kinds.index("policy", 1)]
        (counts,) = [v for v in node.released if v.what == "eval-counts"]
        assert counts.entries == [kinds.index("release")] and counts.noise_multiplier == 8.0
        assert node.epsilon > before.epsilon, "the release is charged"
        assert node.records_agree, "the last spend (the release) recorded the whole history"
        assert [w for w in report.warnings if "node-1" in w] == []


def test_metrics_claiming_more_left_than_the_ledger_signed_is_a_warning(run_dir, tmp_path):
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    metrics = run / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    row = next(c for c in rows[0]["clients"] if c["node"] == "node-0")
    row.update(released=["model-update", "train-metrics"], train_loss=0.41)
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    warnings = [w for w in collect_report(run).warnings if w.startswith("node-0: round 1")]
    assert len(warnings) == 2, warnings
    assert "released ['model-update', 'train-metrics'], the signed entry 1 lists" in warnings[0]
    assert "holds train_loss" in warnings[1]


def test_an_oracle_evaluation_is_flagged_in_every_rendering(built):
    from fedmodel.report.html import render_html
    from fedmodel.report.json_out import render_json
    from fedmodel.report.model import Evaluation

    oracle = Evaluation("oracle", "SIMULATION-ONLY ORACLE on the sites' rows", False, None, True)
    report = dataclasses.replace(built.report, evaluation=oracle)
    html = render_html(report, {"epsilon": b"", "accuracy": b""})
    assert html.count("SIMULATION-ONLY ORACLE") >= 3  # summary, table, alert
    assert json.loads(render_json(report))["evaluation"]["oracle"] is True


def test_a_spend_past_the_cap_then_in_force_is_named(run_dir, tmp_path):
    """A site whose software skipped its own check (the ledger written past the door): the cap
    it had signed is lowered below what it spent, then a round is appended anyway."""
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    folder = run / "nodes" / "node-1"
    ledger = Ledger(folder / "ledger", load_signing_key(folder / "keys" / "signing.ed25519"))
    policy = SitePolicy().model_dump(mode="json")
    (signed,) = ledger.append_decided(
        lambda _e: [ledger.policy_body(RUN_ID, 4, (0.5, DELTA), policy)]
    )
    spend = ledger.append_round(RUN_ID, 4, 1.1, 0.08, 10, 1.0, DELTA, 800)
    report = collect_report(run)
    node = _clients(report)["node-1"]
    assert node.cap.entry == signed.seq and node.budget_exceeded
    assert node.spends_past_cap_in_force == [spend.seq]
    assert f"entries [{spend.seq}] were decided past the cap then in force" in node.verdict
    assert any("did not enforce its own cap" in w for w in report.warnings)


def test_a_node_toml_policy_other_than_the_signed_one_is_named(run_dir, tmp_path):
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    node_toml = run / "nodes" / "node-0" / "node.toml"
    node_toml.write_text(node_toml.read_text() + "[policy]\nshare_train_metrics = true\n")
    (found,) = [w for w in collect_report(run).warnings if "node.toml" in w]
    assert found.startswith("node-0: ") and "states policy share_train_metrics" in found


def test_findings_render_in_every_document(findings_run, tmp_path):
    files = build_report(findings_run, tmp_path / "out")
    html = files.html.read_text()
    assert "Spends with a large δ" in html and "NOT allowed" in html
    assert "NONE: no DP, ε unbounded" in html and "What left each site" in html
    assert files.pdf.read_bytes().startswith(b"%PDF")
    data = json.loads(files.json.read_text())
    node3 = next(c for c in data["clients"] if c["node"] == "node-3")
    assert node3["epsilon_accounted"] == "inf" and node3["budget_exceeded"] is True
    assert node3["released"][0]["protection"] == "none"
