"""Read a run folder's records (run.json, metrics.jsonl) into plain values for the report.

Lenient about what is optional (a run that never recorded TLS reads as "not recorded", not as
"off") and strict about what the report cannot do without: a missing folder, run.json or
metrics.jsonl is a one-line ``ReportError``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmodel.report.errors import ReportError
from fedmodel.report.model import Evaluation, RoundMetrics, RunIdentity, Transport
from fedmodel.runlog import METRICS_FILE, parse_metrics

ClientRows = dict[str, list[tuple[int, dict[str, Any]]]]  # node -> [(round, metrics row)]


@dataclass(frozen=True)
class RunRecords:
    """run.json and metrics.jsonl as read from disk, rounds in order."""

    info: dict[str, Any]
    rounds: list[dict[str, Any]]
    warnings: list[str]

    @property
    def run_id(self) -> str:
        return str(self.info["run_id"])

    @property
    def dp(self) -> dict[str, Any]:
        """The run's configured DP section (accountant, delta, enabled), empty if not recorded."""
        dp = self.info.get("dp")
        return dp if isinstance(dp, dict) else {}


def read_run(run_dir: Path) -> RunRecords:
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: no such run folder")
    info = _read_json(run_dir / "run.json")
    if not isinstance(info, dict) or not info.get("run_id"):
        raise ReportError(f"{run_dir / 'run.json'}: run_id missing")
    rounds, warnings = read_rounds(run_dir / METRICS_FILE)
    return RunRecords(info=info, rounds=rounds, warnings=warnings)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise ReportError(f"{path}: missing (not a run folder?)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReportError(f"{path}: unreadable: {err}") from None


def read_rounds(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Rounds in order, with the run-time parser (:func:`fedmodel.runlog.parse_metrics`) held to
    the report's standard: a torn last line (a run killed mid-write) is dropped with a warning;
    a bad line anywhere else means the file was edited, and is an error."""
    if not path.is_file():
        raise ReportError(f"{path}: missing (no rounds recorded)")
    try:
        log = parse_metrics(path)
    except (OSError, UnicodeDecodeError) as err:
        raise ReportError(f"{path}: unreadable: {err}") from None
    if log.bad_line is not None and not log.torn:
        raise ReportError(f"{path}: line {log.bad_line} is not a round record")
    if not log.rows:
        raise ReportError(f"{path}: no rounds recorded")
    warnings = [f"{path.name}: torn last line ignored"] if log.torn else []
    return sorted(log.rows, key=lambda r: r["round"]), warnings


def client_rows(rounds: list[dict[str, Any]]) -> ClientRows:
    """metrics.jsonl's training replies regrouped per node."""
    return _per_node((row["round"], row.get("clients")) for row in rounds)


def eval_rows(rounds: list[dict[str, Any]]) -> ClientRows:
    """The sites' federated-evaluation replies (``federated.sites``) regrouped per node."""
    return _per_node(
        (row["round"], federated.get("sites"))
        for row in rounds
        if isinstance(federated := row.get("federated"), dict)
    )


def _per_node(replies: Iterable[tuple[int, Any]]) -> ClientRows:
    out: ClientRows = defaultdict(list)
    for rnd, clients in replies:
        for client in clients if isinstance(clients, list) else []:
            if isinstance(client, dict) and client.get("node"):
                out[str(client["node"])].append((rnd, client))
    return dict(out)


def heads_by_node(*row_sets: ClientRows) -> dict[str, list[dict[str, Any]]]:
    """The ledger heads the server was shown (with training and evaluation replies alike),
    which pin each ledger against later rewriting."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rows in row_sets:
        for node, node_rows in rows.items():
            out[node] += [
                c["ledger_head"] for _, c in node_rows if isinstance(c.get("ledger_head"), dict)
            ]
    return dict(out)


def evaluation_settings(info: dict[str, Any]) -> Evaluation:
    """run.json ``evaluation``; a run recorded before it existed says "not recorded"."""
    ev = info.get("evaluation")
    ev = ev if isinstance(ev, dict) else {}
    server = str(ev.get("server") or "not recorded")

    def text(key: str) -> str | None:
        return None if ev.get(key) is None else str(ev[key])

    return Evaluation(
        server=server,
        server_data=text("server_data"),
        federated=ev.get("federated") is True,
        federated_data=text("federated_data"),
        oracle=server == "oracle",
    )


def run_identity(info: dict[str, Any]) -> RunIdentity:
    def opt(key: str) -> str | None:
        value = info.get(key)
        return None if value is None else str(value)

    return RunIdentity(
        run_id=str(info["run_id"]),
        scenario=opt("scenario"),
        config_hash=opt("config_hash"),
        model_hash=opt("model_hash"),
        code_version=opt("code_version"),
        started=opt("started"),
        finished=opt("finished"),
        engine=opt("engine"),
        status=opt("status"),
    )


def transport_settings(info: dict[str, Any]) -> Transport:
    """Unknown stays ``None`` so the report says "not recorded" rather than guessing "off"."""
    t = info.get("transport")
    t = t if isinstance(t, dict) else {}

    def flag(key: str) -> bool | None:
        return None if t.get(key) is None else bool(t[key])

    return Transport(
        tls=flag("tls"),
        node_auth=flag("node_auth"),
        sealed_updates=flag("sealed_updates"),
        secure_aggregation=flag("secure_aggregation"),
    )


def strategy_settings(info: dict[str, Any]) -> dict[str, Any]:
    strategy = info.get("strategy")
    if isinstance(strategy, dict):
        return dict(strategy)
    return {"name": str(strategy)} if strategy else {}


def round_metrics(row: dict[str, Any]) -> RoundMetrics:
    clients = [c for c in row.get("clients") or [] if isinstance(c, dict)]
    server = row.get("server")
    server = server if isinstance(server, dict) else {}
    federated = row.get("federated")
    federated = federated if isinstance(federated, dict) else {}
    return RoundMetrics(
        round=row["round"],
        server=_numbers(server),
        participants=[str(c.get("node")) for c in clients if c.get("status") == "ok"],
        refused=[str(c.get("node")) for c in clients if c.get("status") == "refused"],
        federated={**_numbers(federated), "noised": federated.get("noised") is True}
        if federated
        else {},
    )


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
