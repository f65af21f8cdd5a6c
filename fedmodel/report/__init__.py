"""Compliance report of a federated run: privacy spent per site, verified ledgers, DPIA.

``build_report(run_dir, out_dir, ledgers)`` writes report.json, report.html, report.pdf and
plots/*.png; ``collect_report`` gives the plain-data model alone. Heavy renderers (matplotlib,
reportlab) load only when a report is built, so importing this package stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedmodel.report.errors import ReportError

if TYPE_CHECKING:
    from fedmodel.report.build import ReportFiles, build_report
    from fedmodel.report.collect import collect_report

__all__ = ["ReportError", "ReportFiles", "build_report", "collect_report"]


def __getattr__(name: str) -> Any:
    if name in ("build_report", "ReportFiles"):
        from fedmodel.report import build

        return getattr(build, name)
    if name == "collect_report":
        from fedmodel.report.collect import collect_report

        return collect_report
    raise AttributeError(name)
