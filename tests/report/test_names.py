"""Node names in ledgers and metrics are the sites' word, not the operator's: a report built from
names that are mathtext, paths or markup must neither crash nor reach outside its folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedmodel.report.build import build_report
from fedmodel.report.plots import epsilon_figure
from tests.report.conftest import REPORT_FILES
from tests.report.runfolder import SITES, Site, build_run_dir

# matplotlib reads $...$ as mathtext: the first renders as math, the second does not parse
HOSTILE = ("$x^2$", "$\\foo{$", "a/b", "..")
PLANTED_CAP = 0.5  # a node.toml the report must never read for a metrics-only node named ".."


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory) -> Path:
    """Three ledgered sites with hostile names, and one more ("..") known only from metrics."""
    root = tmp_path_factory.mktemp("names")
    sites = tuple(
        Site(name, site.records, site.cap) for name, site in zip(HOSTILE, SITES, strict=False)
    )
    run_dir = build_run_dir(root, sites)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for row in rows:  # "..": no ledger, so the report looks for RUN_DIR/nodes/<name>/node.toml
        row["clients"].append({**row["clients"][1], "node": HOSTILE[3], "ledger_head": None})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # what RUN_DIR/nodes/../node.toml would resolve to
    (run_dir / "node.toml").write_text(f"[budget]\nepsilon = {PLANTED_CAP}\ndelta = 1e-5\n")
    return run_dir


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_hostile_names_neither_crash_nor_leave_the_output_folder(hostile_run, tmp_path):
    before = _files(hostile_run)
    out = tmp_path / "out" / "report"
    files = build_report(hostile_run, out)

    assert _files(hostile_run) == before, "nothing written into the run folder"
    assert _files(tmp_path) == {f"out/report/{name}" for name in REPORT_FILES}
    nodes = {c.node: c for c in files.report.clients}
    assert set(nodes) == set(HOSTILE)
    assert nodes[".."].cap is None, "a name from a reply is never joined into a path"
    flagged = [w for w in files.report.warnings if "breaks the node-name rule" in w]
    assert len(flagged) == len(HOSTILE)
    html = files.html.read_text()
    assert "$x^2$" in html and "a/b" in html and files.pdf.read_bytes().startswith(b"%PDF")
    assert {c["node"] for c in json.loads(files.json.read_text())["clients"]} == set(HOSTILE)


def test_the_epsilon_plot_draws_each_name_as_written(hostile_run, tmp_path):
    report = build_report(hostile_run, tmp_path / "out").report
    ax = epsilon_figure(report.clients).axes[0]
    legend = ax.get_legend().get_texts()
    assert [t.get_text() for t in legend] == [c.node for c in report.clients]
    caps = [t for t in ax.texts if t.get_text().startswith("cap ")]
    assert caps and any("$x^2$" in t.get_text() for t in caps)
    assert not any(t.get_parse_math() for t in [*legend, *caps]), "names are never mathtext"


def test_a_name_starting_with_underscore_stays_in_the_legend(tmp_path):
    run_dir = build_run_dir(tmp_path, (Site("_nolegend_", 800, None), *SITES[1:]))
    report = build_report(run_dir, tmp_path / "out").report
    legend = epsilon_figure(report.clients).axes[0].get_legend().get_texts()
    assert "_nolegend_" in [t.get_text() for t in legend]
