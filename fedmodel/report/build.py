"""Collect, render everything in memory, then write: a failure anywhere leaves no report files.

Each file is placed with an atomic rename, and nothing is written until every rendering has
succeeded, so a reader finds either the complete new report or whatever was there before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedmodel.io import atomic_write_bytes
from fedmodel.report.collect import collect_report
from fedmodel.report.crosscheck import DEFAULT_TOLERANCE
from fedmodel.report.errors import ReportError
from fedmodel.report.html import render_html
from fedmodel.report.json_out import render_json
from fedmodel.report.model import Report
from fedmodel.report.pdf import render_pdf
from fedmodel.report.plots import render_plots


@dataclass(frozen=True)
class ReportFiles:
    """Where the report landed, plus the model it was rendered from."""

    report: Report
    html: Path
    pdf: Path
    json: Path
    plots: dict[str, Path]


def build_report(
    run_dir: Path,
    out_dir: Path,
    ledgers: Sequence[Path] | None = None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    registered_keys: Path | None = None,
    server_key: Path | None = None,
) -> ReportFiles:
    """Verify the ledgers, compute the report and write report.{html,pdf,json} + plots/*.png."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ReportError(f"--out {out_dir}: exists and is not a folder")
    report = collect_report(
        Path(run_dir),
        ledgers,
        tolerance=tolerance,
        registered_keys=registered_keys,
        server_key=server_key,
    )
    plots = render_plots(report)
    payloads = {
        "report.json": render_json(report).encode("utf-8"),
        "report.html": render_html(report, plots).encode("utf-8"),
        "report.pdf": render_pdf(report, plots),
        **{f"plots/{name}.png": png for name, png in plots.items()},
    }
    try:
        written = {
            name: atomic_write_bytes(out_dir / name, data) for name, data in payloads.items()
        }
    except OSError as err:
        raise ReportError(f"--out {out_dir}: cannot write the report: {err}") from None
    return ReportFiles(
        report=report,
        html=written["report.html"],
        pdf=written["report.pdf"],
        json=written["report.json"],
        plots={name: written[f"plots/{name}.png"] for name in plots},
    )
