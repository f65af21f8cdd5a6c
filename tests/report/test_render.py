"""Renderers and the CLI's success path on the session's report, varied without recomputing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import fedmodel.report.build
from fedmodel.report.collect import central_dp, central_dp_warnings
from fedmodel.report.crosscheck import gaussian_rdp_epsilon
from fedmodel.report.html import render_html
from fedmodel.report.model import CentralDP, Refusal
from fedmodel.report.pdf import render_pdf
from fedmodel.report.runfolder import RunRecords
from fedmodel.report.view import central_dp_table, spend_table
from tests.report.conftest import invoke


def test_cli_success_prints_summary(built, run_dir: Path, monkeypatch) -> None:
    calls = []

    def fake_build(run, out, ledgers, registered_keys=None, server_key=None):
        calls.append((run, out, ledgers, registered_keys, server_key))
        return built

    monkeypatch.setattr(fedmodel.report.build, "build_report", fake_build)
    result = invoke(str(run_dir))
    assert result.exit_code == 0, result.output
    assert calls == [(run_dir, run_dir / "report", None, None, None)], "default: RUN_DIR/report"
    assert "budget exceeded: none" in result.stdout and "report.pdf" in result.stdout


def test_site_text_is_escaped_in_html(built) -> None:
    client = built.report.clients[2]
    evil = Refusal(3, "<script>alert('x')</script>", 4.0, "ledger")
    report = dataclasses.replace(
        built.report,
        clients=[*built.report.clients[:2], dataclasses.replace(client, refusals=[evil])],
    )
    html = render_html(report, {"epsilon": b"", "accuracy": b""})
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_exceeded_budget_is_flagged(built) -> None:
    client = dataclasses.replace(
        built.report.clients[0], budget_exceeded=True, verdict="budget exceeded: YES (x)"
    )
    report = dataclasses.replace(built.report, clients=[client], any_budget_exceeded=True)
    table = spend_table(report)
    assert table.flagged == [0] and table.rows[0][-1] == "YES"


def _central(recorded: float, **extra) -> RunRecords:
    info = {
        "run_id": "r",
        "strategy": {"name": "fedavg", "fraction_train": 0.5},
        "central_dp": {
            "enabled": True,
            "wrapper": "DifferentialPrivacyServerSideFixedClipping",
            "neighbouring": "replace-one",
            "noise_multiplier": 2.0,
            "clipping_norm": 5.0,
            "delta": 1e-5,
            "rounds": 3,
            "epsilon": recorded,
            **extra,
        },
    }
    return RunRecords(info=info, rounds=[{}] * 3, warnings=[])


# three Gaussian releases at noise 2.0 / 2 (replace-one), dp-accounting RDP, delta 1e-5
CENTRAL_EPSILON = gaussian_rdp_epsilon(1.0, 3, 1e-5)


def test_central_dp_section_apart_from_record_level(built) -> None:
    records = _central(CENTRAL_EPSILON)
    cdp = central_dp(records, 0.02)
    assert cdp.used and cdp.epsilon == CENTRAL_EPSILON and cdp.crosscheck is not None
    assert cdp.crosscheck.within_tolerance and cdp.records_agree
    assert central_dp_warnings(records, cdp) == []
    report = dataclasses.replace(built.report, central_dp=cdp)
    html = render_html(report, {"epsilon": b"", "accuracy": b""})
    assert "Central / client-level DP (server side)" in html
    assert "DifferentialPrivacyServerSideFixedClipping" in html
    assert "replace-one (one site&#39;s update replaced by any other" in html
    assert render_pdf(report, built_plots(built)).startswith(b"%PDF")
    off = central_dp(RunRecords(info={"run_id": "r"}, rounds=[], warnings=[]), 0.02)
    assert off == CentralDP(used=False, settings={}, epsilon=None, delta=None, crosscheck=None)
    assert "No central (client-level) DP was used" in render_html(
        built.report, {"epsilon": b"", "accuracy": b""}
    )


def built_plots(built) -> dict[str, bytes]:
    return {name: path.read_bytes() for name, path in built.plots.items()}


@pytest.mark.parametrize(
    ("change", "finding"),
    [
        ({"epsilon": 999.0}, "records client-level epsilon 999 (replace-one); its settings give"),
        ({"noise_multiplier": 4.0}, "its settings give"),  # the noise the figure came from
        ({"rounds": 1}, "its settings give"),
        ({"neighbouring": "add-remove"}, "(add-remove); its settings give"),
        ({"neighbouring": "swap-two"}, "unknown neighbouring relation 'swap-two'"),
        ({"delta": None}, "cannot be recomputed"),
    ],
)
def test_a_recorded_central_epsilon_its_settings_do_not_give_is_a_finding(built, change, finding):
    records = _central(CENTRAL_EPSILON, **change)
    cdp = central_dp(records, 0.02)
    assert not cdp.records_agree
    found = central_dp_warnings(records, cdp)
    assert len(found) == 1 and finding in found[0], found
    assert central_dp_table(dataclasses.replace(built.report, central_dp=cdp)).flagged


def test_a_run_json_without_a_relation_reads_as_flowers_add_remove():
    records = _central(gaussian_rdp_epsilon(2.0, 3, 1e-5))
    del records.info["central_dp"]["neighbouring"]
    cdp = central_dp(records, 0.02)
    assert cdp.neighbouring == "add-remove" and cdp.records_agree
    (found,) = central_dp_warnings(records, cdp)
    assert "does not state the neighbouring relation" in found
