"""Renderers and the CLI's success path on the session's report, varied without recomputing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import fedmodel.report.build
from fedmodel.report.collect import central_dp
from fedmodel.report.html import render_html
from fedmodel.report.model import CentralDP, Refusal
from fedmodel.report.pdf import render_pdf
from fedmodel.report.runfolder import RunRecords
from fedmodel.report.view import spend_table
from tests.report.conftest import invoke


def test_cli_success_prints_summary(built, run_dir: Path, monkeypatch) -> None:
    calls = []

    def fake_build(run, out, ledgers, registered_keys=None):
        calls.append((run, out, ledgers, registered_keys))
        return built

    monkeypatch.setattr(fedmodel.report.build, "build_report", fake_build)
    result = invoke(str(run_dir))
    assert result.exit_code == 0, result.output
    assert calls == [(run_dir, run_dir / "report", None, None)], "default --out is RUN_DIR/report"
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


def test_central_dp_section_apart_from_record_level(built) -> None:
    info = {
        "run_id": "r",
        "strategy": {"name": "fedavg", "fraction_train": 0.5},
        "central_dp": {
            "enabled": True,
            "wrapper": "DifferentialPrivacyServerSideFixedClipping",
            "noise_multiplier": 1.0,
            "clipping_norm": 5.0,
            "delta": 1e-5,
            "epsilon": 4.2,
        },
    }
    cdp = central_dp(RunRecords(info=info, rounds=[{}] * 3, warnings=[]), 0.02)
    assert cdp.used and cdp.epsilon == 4.2 and cdp.crosscheck is not None
    assert cdp.crosscheck.within_tolerance
    report = dataclasses.replace(built.report, central_dp=cdp)
    html = render_html(report, {"epsilon": b"", "accuracy": b""})
    assert "Central / client-level DP (server side)" in html
    assert "DifferentialPrivacyServerSideFixedClipping" in html
    assert render_pdf(report, built_plots(built)).startswith(b"%PDF")
    off = central_dp(RunRecords(info={"run_id": "r"}, rounds=[], warnings=[]), 0.02)
    assert off == CentralDP(used=False, settings={}, epsilon=None, delta=None, crosscheck=None)
    assert "No central (client-level) DP was used" in render_html(
        built.report, {"epsilon": b"", "accuracy": b""}
    )


def built_plots(built) -> dict[str, bytes]:
    return {name: path.read_bytes() for name, path in built.plots.items()}
