"""The last line of ``make demo`` and ``benchmarks/results/demo.json``.

Reads what the demo left behind and nothing else: the test accuracy the server recorded after the
last round (``metrics.jsonl``) and the per-site epsilons the report recomputed from the signed
ledgers (``report.json``: the ledger is the source of truth, not the sites' metrics). Prints one
line - accuracy, highest epsilon, sites, report path - and writes ``{"accuracy", "epsilon",
"wall_s"}`` with the sites, rounds and load average beside them.

Usage: ``python benchmarks/demo_summary.py RUN_DIR REPORT_DIR --started EPOCH_SECONDS``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _common import RESULTS_DIR, machine, run_summary

GOALS = {"accuracy": 0.90, "wall_s": 120.0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("report_dir", type=Path)
    p.add_argument("--started", type=float, required=True, help="demo start, seconds since epoch")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "demo.json")
    args = p.parse_args(argv)
    wall_s = round(time.time() - args.started, 1)
    report_json = args.report_dir / "report.json"
    try:
        report = json.loads(report_json.read_text())
        summary = run_summary(args.run_dir)
    except (OSError, ValueError, KeyError) as err:
        print(f"demo: cannot summarise {args.run_dir}: {err}", file=sys.stderr)
        return 2
    epsilons = [c["epsilon_accounted"] for c in report["clients"]]
    result = {
        "accuracy": round(float(summary["accuracy"]), 4),
        "epsilon": round(max(epsilons), 3),
        "wall_s": wall_s,
        "sites": len(epsilons),
        "rounds": summary["rounds_recorded"],
        "goals": GOALS,
        "run_dir": str(args.run_dir),
        "report": str(args.report_dir / "report.html"),
        "machine": machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"demo: accuracy {result['accuracy']:.1%} at epsilon <= {result['epsilon']:.2f} per site, "
        f"{result['sites']} sites, {wall_s:.0f} s; report {result['report']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
