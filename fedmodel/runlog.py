"""A run's ``metrics.jsonl``: the one parser behind the server, the CLI, benchmarks and the report.

The server appends one whole line per round (:func:`fedmodel.io.append_line_durably`), so the
only damage a crash (or a reader racing the writer) can leave is a torn last line. Readers differ
only in what they make of damage: the server and anything following a live run stop at it and
carry on (:func:`read_metrics`); the report refuses a file damaged anywhere else, since that
means it was edited (``fedmodel.report.runfolder.read_rounds``). Both read through
:func:`parse_metrics`, so they can never disagree about which lines are round records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class MetricsLog:
    """``metrics.jsonl`` as parsed: the round records before the first line that is not one.

    Line numbers count non-blank lines from 1. ``bad_line`` is ``None`` when every line is a
    round record (a JSON object with an integer ``round``).
    """

    rows: list[dict[str, Any]]
    lines: int
    bad_line: int | None = None

    @property
    def torn(self) -> bool:
        """The one bad line is the last: a write cut short, not an edit."""
        return self.bad_line is not None and self.bad_line == self.lines


def parse_metrics(path: Path) -> MetricsLog:
    """Parse ``path`` up to its first bad line, rows in file order with ``round`` as an ``int``.

    Raises ``OSError``/``UnicodeDecodeError`` when the file cannot be read: what a missing or
    unreadable file means is the caller's call.
    """
    lines = [ln for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            rows.append({**row, "round": int(row["round"])})
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            return MetricsLog(rows=rows, lines=len(lines), bad_line=number)
    return MetricsLog(rows=rows, lines=len(lines))


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Rounds recorded so far in ``run_dir``; a torn last line (crash mid-write, or a line being
    written right now) is left out, not fatal, and no file yet means no rounds yet."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return parse_metrics(path).rows
