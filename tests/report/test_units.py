"""Pure helpers of the report: no accountant runs, milliseconds each."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fedmodel.report.crosscheck import merge_repeats, relative_difference
from fedmodel.report.errors import ReportError
from fedmodel.report.evidence import gather_evidence
from fedmodel.report.json_out import _finite
from fedmodel.report.ledgers import find_ledgers
from fedmodel.report.narrative import membership_tpr_bound
from fedmodel.report.runfolder import client_rows, read_rounds
from fedmodel.runlog import METRICS_FILE, read_metrics


def test_merge_repeats_keeps_order_and_changes() -> None:
    history = [(1.1, 0.1, 5), (1.1, 0.1, 5), (1.3, 0.1, 4), (1.1, 0.1, 2)]
    assert merge_repeats(history) == [[1.1, 0.1, 10], [1.3, 0.1, 4], [1.1, 0.1, 2]]


def test_relative_difference_is_symmetric() -> None:
    assert relative_difference(1.0, 1.02) == pytest.approx(relative_difference(1.02, 1.0))
    assert relative_difference(0.0, 0.0) == 0.0
    assert relative_difference(math.inf, 2.0) == math.inf


def test_membership_bound() -> None:
    assert membership_tpr_bound(1.0, 1e-5) == pytest.approx(math.e * 0.01 + 1e-5)
    assert membership_tpr_bound(10.0, 1e-5) == 1.0 == membership_tpr_bound(math.inf, 1e-5)


def test_non_finite_numbers_become_strings_in_json() -> None:
    assert _finite({"a": [math.inf, 1.0], "b": -math.inf}) == {"a": ["inf", 1.0], "b": "-inf"}


def _write_metrics(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines))
    return path


def test_torn_last_metrics_line_is_dropped_but_a_bad_middle_line_is_an_error(tmp_path) -> None:
    good = json.dumps({"round": 1, "clients": []})
    rows, warnings = read_rounds(_write_metrics(tmp_path / "m.jsonl", [good, '{"round": 2, "se']))
    assert [r["round"] for r in rows] == [1] and warnings == ["m.jsonl: torn last line ignored"]
    with pytest.raises(ReportError, match="line 1 is not a round record"):
        read_rounds(_write_metrics(tmp_path / "m.jsonl", ["{oops", good]))


def test_the_run_time_reader_stops_at_damage_where_the_report_refuses(tmp_path) -> None:
    """Server and report parse metrics.jsonl with one parser; only the policy differs."""
    good = json.dumps({"round": 1, "clients": []})
    assert read_metrics(tmp_path) == []  # no metrics.jsonl yet: no rounds yet
    _write_metrics(tmp_path / METRICS_FILE, [good, "{oops", json.dumps({"round": 2})])
    assert read_metrics(tmp_path) == [{"round": 1, "clients": []}]


def test_ledgers_found_in_either_layout(tmp_path) -> None:
    for rel in ("nodes/node-0/ledger/ledger.jsonl", "nodes/node-1/ledger.jsonl"):
        (tmp_path / rel).parent.mkdir(parents=True)
        (tmp_path / rel).write_text("")
    assert [p.parent.name for p in find_ledgers(tmp_path)] == ["ledger", "node-1"]
    assert len(find_ledgers(tmp_path, [tmp_path / "nodes"])) == 2
    with pytest.raises(ReportError, match=r"no ledger\.jsonl"):
        find_ledgers(tmp_path, [tmp_path / "elsewhere"])


def test_round_without_noise_is_unprotected_and_errors_are_listed() -> None:
    rows = client_rows(
        [
            {"round": 1, "clients": [{"node": "node-10", "status": "ok", "noise_multiplier": 0.0}]},
            {
                "round": 2,
                "clients": [
                    {"node": "node-10", "status": "error", "reason": "OOM"},
                    {"node": "node-2", "status": "refused", "reason": "cap"},
                ],
            },
        ]
    )
    node2, node10 = gather_evidence("run", rows, {})
    assert (node2.node, node10.node) == ("node-2", "node-10"), "numeric node order"
    assert node10.unprotected == [1] and node10.history == []
    assert [(f.round, f.reason) for f in node10.failures] == [(2, "OOM")]
    assert [(r.round, r.source) for r in node2.refusals] == [(2, "metrics")]
    assert any("without DP noise" in w for w in node10.warnings)
