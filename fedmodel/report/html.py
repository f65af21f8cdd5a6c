"""report.html: one self-contained file (plots inlined as base64) a reviewer can archive or mail.

Jinja2 with autoescaping on and undefined names as errors: ledger reasons, node names and
run.json values come from sites and must never be able to inject markup into the document.
"""

from __future__ import annotations

import base64

from jinja2 import Environment, PackageLoader, StrictUndefined

from fedmodel.report.model import Report
from fedmodel.report.view import document

TEMPLATE = "report.html.j2"


def render_html(report: Report, plots: dict[str, bytes]) -> str:
    """The whole HTML document as text."""
    env = Environment(
        loader=PackageLoader("fedmodel.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template(TEMPLATE).render(
        report=report,
        blocks=document(report),
        plots={name: _data_uri(png) for name, png in plots.items()},
    )


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
