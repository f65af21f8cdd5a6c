"""report.json: every number of the report, unrounded, for auditors' scripts and dashboards.

Strict JSON: a non-finite float (an accountant that returned infinity) becomes the string
"inf"/"-inf"/"nan" rather than the non-standard ``Infinity`` token many parsers reject.
"""

from __future__ import annotations

import json
import math
from typing import Any

from fedmodel.report.model import Report


def render_json(report: Report) -> str:
    return json.dumps(_finite(report.to_dict()), indent=2, allow_nan=False) + "\n"


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
