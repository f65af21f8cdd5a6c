"""A real simulation's report from its run folder alone, and its audit log against the published
server key.

The run trains for real (Flower simulation, Opacus); afterwards the virtual sites' folders are
moved out of the run folder, as real sites keep their own disks, so the report can only use what
the replies carried: the server's copy of each ledger and the keys the run registered.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fedmodel.config import PrivacyBudget
from fedmodel.crypto.keys import generate_signing_key, load_signing_key, save_public_key
from fedmodel.crypto.pin import PIN_FILE
from fedmodel.privacy.ledger import LEDGER_FILE, Ledger
from fedmodel.report.collect import collect_report
from fedmodel.report.errors import ReportError
from fedmodel.scenarios import apply_overrides
from server.audit import verify_audit
from server.records import read_metrics
from tests.federation.helpers import run, small_tabular
from tests.report.conftest import invoke

CAP = PrivacyBudget(epsilon=40.0, delta=1e-5)


@pytest.fixture(scope="module")
def alone(tmp_path_factory) -> tuple[Path, Path]:
    """(run folder without its sites, the sites' folders elsewhere)."""
    cfg = apply_overrides(small_tabular("fedavg", clients=2), {"federation.rounds": 2}, "test")
    cfg = cfg.model_copy(update={"client_budgets": {0: CAP}})
    root = tmp_path_factory.mktemp("alone")
    run_dir = run(cfg, root / "run")
    sites = root / "sites"
    shutil.move(run_dir / "nodes", sites)
    return run_dir, sites


def test_the_report_verifies_every_site_from_the_run_folder_alone(alone):
    run_dir, _ = alone
    rows = [c for r in read_metrics(run_dir) if r["round"] > 0 for c in r["clients"]]
    assert {c["status"] for c in rows} == {"ok"}, rows
    report = collect_report(run_dir)
    clients = {c.node: c for c in report.clients}
    assert set(clients) == {"node-0", "node-1"}
    capped, free = clients["node-0"], clients["node-1"]
    assert capped.cap is not None and capped.cap_status == "signed"
    assert (capped.cap.epsilon, capped.cap.delta) == (CAP.epsilon, CAP.delta)
    assert capped.verdict.startswith("budget exceeded: no (epsilon")
    assert free.cap is None and free.cap_status == "uncapped"  # signed: no cap, not "unsigned"
    for client in clients.values():
        assert client.ledger.verified and client.ledger.key_pinned
        assert client.ledger.path.startswith(str(run_dir / "ledgers"))
        assert client.history_source == "ledger" and client.epsilon > 0
        assert "ledger-entries" in {v.what for v in client.released}
    assert not [w for w in report.warnings if "ledger" in w], report.warnings


def test_the_copy_is_the_sites_own_lines_up_to_its_last_reply(alone):
    run_dir, sites = alone
    for k in range(2):
        own = (sites / f"node-{k}" / "ledger" / LEDGER_FILE).read_text().splitlines()
        copy = (run_dir / "ledgers" / f"node-{k}" / LEDGER_FILE).read_text().splitlines()
        assert copy == own[: len(copy)] and len(own) == len(copy) + 1  # the last commit


def test_ledgers_cross_check_passes_for_the_sites_own_and_stops_a_rewritten_one(alone, tmp_path):
    run_dir, sites = alone
    report = collect_report(run_dir, [sites])
    assert all("matches the site's ledger" in c.ledger.key_source for c in report.clients)
    forged = tmp_path / "forged"
    shutil.copytree(sites, forged)
    folder = forged / "node-1"
    shutil.rmtree(folder / "ledger")
    key = load_signing_key(folder / "keys" / "signing.ed25519")
    Ledger(folder / "ledger", key, node="node-1").append_round(
        "another-history", 1, 1.0, 0.1, 10, 1.0, 1e-5, 100
    )
    result = invoke(str(run_dir), "--ledgers", str(forged), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2  # the server's heads or the copy name the rewrite
    assert str(folder / "ledger") in result.output and result.output.count("\n") == 1
    assert "Traceback" not in result.output


def test_a_copy_edited_in_the_run_folder_stops_the_report(alone, tmp_path):
    run_dir, _ = alone
    edited = tmp_path / "run"
    shutil.copytree(run_dir, edited)
    copy = edited / "ledgers" / "node-0" / LEDGER_FILE
    copy.write_text(copy.read_text().replace('"cap_epsilon":40.0', '"cap_epsilon":400.0'))
    with pytest.raises(ReportError, match="bad-hash"):
        collect_report(edited)


def test_the_audit_log_verifies_with_the_published_key_and_fails_with_another(alone, tmp_path):
    run_dir, sites = alone
    pinned = json.loads((sites / "node-0" / PIN_FILE).read_text())["server_verify_key"]
    published = run_dir / "server-keys" / "server.ed25519.pub"
    assert Path(pinned).read_bytes() == published.read_bytes()  # what every site pinned
    assert verify_audit(run_dir, published).ok
    other = tmp_path / "other.pub"
    save_public_key(generate_signing_key().public_key(), other)
    assert verify_audit(run_dir, other).first_break.kind == "bad-signature"
    report = collect_report(run_dir, server_key=other)
    assert report.audit is not None and not report.audit.verified
    assert any("audit log does not verify" in w for w in report.warnings)
    result = invoke(str(run_dir), "--server-key", str(tmp_path / "missing.pub"))
    assert result.exit_code == 0  # the report is written; the audit finding names the file
