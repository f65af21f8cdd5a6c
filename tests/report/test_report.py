"""The compliance report of a realistic 3-hospital run: numbers, documents, failure modes."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from fedmodel.privacy.accountant import epsilon_from_history, pld_epsilon
from fedmodel.privacy.ledger import verify_ledger
from tests.report.conftest import REPORT_FILES, invoke
from tests.report.runfolder import DELTA, NOISE, RUN_ID, SITES


def ledger_history(run_dir: Path, node: str) -> list[tuple[float, float, int]]:
    entries = verify_ledger(run_dir / "nodes" / node / "ledger").entries
    return [h for e in entries if e.kind == "round" for h in e.history]


def test_all_files_written(out_dir: Path) -> None:
    for name in REPORT_FILES:
        assert (out_dir / name).stat().st_size > 0, name
    assert not list(out_dir.rglob("*.tmp")), "atomic writes leave no temp files"


def test_epsilon_is_recomputed_from_each_ledger(run_dir: Path, clients: dict) -> None:
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for site in SITES:
        c = clients[site.node]
        history = ledger_history(run_dir, site.node)
        assert c["epsilon"] == pytest.approx(epsilon_from_history(history, DELTA), rel=1e-9)
        assert c["delta"] == DELTA and c["accountant"] == "prv"
        last_ok = [
            r
            for row in metrics
            for r in row["clients"]
            if r["node"] == site.node and r["status"] == "ok"
        ][-1]
        assert c["epsilon"] == pytest.approx(last_ok["epsilon"], rel=1e-9), "metrics agree"
        assert c["records_agree"] and c["ledger"]["verified"]
        assert c["noise_multipliers"] == [NOISE] and c["max_grad_norms"] == [1.0]
        assert c["sample_rates"] == [pytest.approx(site.sample_rate)]
        assert c["steps"] == site.steps * len(c["rounds"])


def test_caps_remaining_and_verdicts(clients: dict, report_json: dict) -> None:
    """Caps are the ones each node signed (its first policy entry), never node.toml's."""
    for site in SITES:
        c = clients[site.node]
        assert c["policy_entries"] == [0] and c["policy"]["entry"] == 0
        if site.cap is None:
            assert c["cap"] is None and c["remaining_epsilon"] is None
            assert c["cap_status"] == "uncapped"
            assert c["verdict"] == "budget exceeded: no (the site signed no cap)"
        else:
            assert c["cap"]["epsilon"] == site.cap and c["cap"]["entry"] == 0
            assert c["cap_status"] == "signed"
            assert c["cap"]["source"].startswith("signed policy, ledger entry 0")
            assert c["remaining_epsilon"] == pytest.approx(site.cap - c["epsilon"])
            assert c["verdict"].startswith("budget exceeded: no")
        assert c["budget_exceeded"] is False and c["spends_past_cap_in_force"] == []
    assert report_json["any_budget_exceeded"] is False


def test_rounds_and_refusals(clients: dict, report_json: dict) -> None:
    assert clients["node-0"]["rounds"] == [1, 2, 3]
    assert clients["node-1"]["rounds"] == [1, 2, 3]
    assert clients["node-2"]["rounds"] == [1, 2]
    (refusal,) = clients["node-2"]["refusals"]
    assert refusal["round"] == 3 and refusal["source"] == "ledger"
    assert "cap 3.8" in refusal["reason"] and refusal["projected_epsilon"] > 3.8
    assert clients["node-0"]["refusals"] == [] == clients["node-1"]["refusals"]
    assert [r["refused"] for r in report_json["rounds"]] == [[], [], ["node-2"]]
    assert [len(p["epsilon_by_round"]) for p in clients.values()] == [3, 3, 2]


def test_pld_crosscheck_within_two_percent(run_dir: Path, clients: dict) -> None:
    # PLD is the slow accountant: recompute one site's independently (the report merges repeated
    # mechanisms before composing, which must not change the number), check all sites' margins.
    unmerged = pld_epsilon(ledger_history(run_dir, "node-2"), DELTA)
    assert clients["node-2"]["crosscheck"]["epsilon_pld"] == pytest.approx(unmerged, rel=1e-6)
    for c in clients.values():
        cc = c["crosscheck"]
        expected = abs(cc["epsilon_prv"] - cc["epsilon_pld"]) / max(
            cc["epsilon_prv"], cc["epsilon_pld"]
        )
        assert cc["relative_difference"] == pytest.approx(expected)
        assert cc["relative_difference"] <= 0.02 and cc["within_tolerance"]


def test_run_identity_transport_and_ledger_heads(report_json: dict, clients: dict) -> None:
    assert report_json["run"]["run_id"] == RUN_ID
    assert report_json["run"]["engine"] == "simulation"
    assert report_json["transport"] == {
        "tls": True,
        "node_auth": True,
        "sealed_updates": True,
        "secure_aggregation": False,
    }
    assert report_json["central_dp"]["used"] is False
    assert report_json["warnings"] == []
    for c in clients.values():
        assert c["ledger"]["key_pinned"] and c["ledger"]["heads_checked"] == 3
        assert re.fullmatch(r"[0-9a-f]{64}", c["ledger"]["head_hash"])


def test_pdf_has_several_pages(out_dir: Path) -> None:
    pdf = (out_dir / "report.pdf").read_bytes()
    assert pdf.startswith(b"%PDF")
    assert len(re.findall(rb"/Type\s*/Page(?!s)", pdf)) >= 2


def test_html_is_self_contained_with_dpia(out_dir: Path) -> None:
    html = (out_dir / "report.html").read_text()
    for site in SITES:
        assert site.node in html
    assert "Data protection impact assessment" in html
    assert "Raw records never leave the site" in html
    assert "budget exceeded: no" in html
    assert html.count('src="data:image/png;base64,') == 2
    assert "<script" not in html and 'src="http' not in html


def _copy_run(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


def _assert_refused(result, out: Path, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert "\n" not in line and line.startswith("error: ")
    for needle in needles:
        assert needle in line, line
    assert not out.exists(), "no report files after a failure"


def test_tampered_ledger_stops_the_report(run_dir: Path, tmp_path: Path) -> None:
    run = _copy_run(run_dir, tmp_path)
    ledger = run / "nodes" / "node-1" / "ledger" / "ledger.jsonl"
    lines = ledger.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace('"noise_multiplier":1.1', '"noise_multiplier":2.2')
    ledger.write_text("".join(lines))
    out = tmp_path / "out"
    _assert_refused(invoke(str(run), "--out", str(out)), out, "node-1", "entry 1", "bad-hash")


def test_cut_ledger_stops_the_report(run_dir: Path, tmp_path: Path) -> None:
    run = _copy_run(run_dir, tmp_path)
    ledger = run / "nodes" / "node-0" / "ledger" / "ledger.jsonl"
    ledger.write_text("".join(ledger.read_text().splitlines(keepends=True)[:2]))
    out = tmp_path / "out"
    _assert_refused(invoke(str(run), "--out", str(out)), out, "node-0", "cut-tail")


@pytest.mark.parametrize("missing", ["metrics.jsonl", "run.json", ""])
def test_missing_run_files_exit_2(run_dir: Path, tmp_path: Path, missing: str) -> None:
    run = _copy_run(run_dir, tmp_path)
    if missing:
        (run / missing).unlink()
    else:
        shutil.rmtree(run)
    out = tmp_path / "out"
    _assert_refused(invoke(str(run), "--out", str(out)), out, missing or "no such run folder")


def test_explicit_ledgers_path_without_ledger_exit_2(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke(str(run_dir), "--ledgers", str(empty), "--out", str(out))
    _assert_refused(result, out, "--ledgers", "no ledger.jsonl")


def _registry(run_dir: Path, root: Path) -> Path:
    """What the coordinator holds: each site's signing key as registered at enrolment."""
    registry = root / "registry"
    registry.mkdir()
    for site in SITES:
        pub = run_dir / "nodes" / site.node / "keys" / "signing.ed25519.pub"
        shutil.copy(pub, registry / f"{site.node}.ed25519.pub")
    return registry


def test_registered_keys_verify_every_ledger(run_dir: Path, tmp_path: Path) -> None:
    registry = _registry(run_dir, tmp_path)
    out = tmp_path / "out"
    result = invoke(str(run_dir), "--keys", str(registry), "--out", str(out))
    assert result.exit_code == 0, result.output
    clients = {c["node"]: c for c in json.loads((out / "report.json").read_text())["clients"]}
    for site in SITES:
        assert (
            str(registry / f"{site.node}.ed25519.pub") in clients[site.node]["ledger"]["key_source"]
        )


def test_a_ledger_signed_by_another_key_than_registered_stops_the_report(
    run_dir: Path, tmp_path: Path
) -> None:
    """The site's disk says one key (node.toml, signer.pub); the coordinator registered another."""
    from fedmodel.crypto.keys import generate_signing_key, save_public_key

    registry = _registry(run_dir, tmp_path)
    target = registry / "node-1.ed25519.pub"
    target.unlink()
    save_public_key(generate_signing_key().public_key(), target)
    out = tmp_path / "out"
    result = invoke(str(run_dir), "--keys", str(registry), "--out", str(out))
    _assert_refused(result, out, "node-1", "bad-signature")

    target.unlink()
    _assert_refused(
        invoke(str(run_dir), "--keys", str(registry), "--out", str(out)),
        out,
        "node-1",
        "no key in the registry",
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    _assert_refused(
        invoke(str(run_dir), "--keys", str(empty), "--out", str(out)), out, "--keys", "registered"
    )


def test_a_cap_raised_in_node_toml_beside_the_ledger_is_not_believed(run_dir, tmp_path):
    """Finding #9: a site (or anyone with its disk) raised the cap in node.toml after the fact;
    the report must show the cap the site signed when it decided, and name the disagreement."""
    from fedmodel.report.collect import collect_report

    run = _copy_run(run_dir, tmp_path)
    node_toml = run / "nodes" / "node-2" / "node.toml"
    node_toml.write_text(node_toml.read_text().replace("epsilon = 3.8", "epsilon = 100.0"))
    report = collect_report(run)
    node2 = {c.node: c for c in report.clients}["node-2"]
    assert node2.cap is not None and node2.cap.epsilon == 3.8, node2.cap
    assert "signed policy" in node2.cap.source
    assert any("node.toml" in w and "100" in w for w in report.warnings), report.warnings
