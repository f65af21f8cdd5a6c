"""The run folder: what a federated run leaves behind for users, ``--resume`` and the report.

Layout is documented in docs/architecture.md. Every file is written atomically; ``metrics.jsonl``
only ever grows by whole lines, so a run killed mid-round still leaves a readable history.
"""

from __future__ import annotations

import csv
import io
import json
import math
import platform
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedmodel import __version__
from fedmodel.config import ConfigError, ScenarioConfig, config_hash, load_toml
from fedmodel.io import append_line_durably, atomic_write_json, atomic_write_text

# read_metrics is fedmodel.runlog's, re-exported here beside the writer: the server, the CLI,
# benchmarks and tests import it from here, and the report parses the file with the same code.
from fedmodel.runlog import METRICS_FILE, read_metrics
from fedmodel.scenarios import scenario_to_toml

CHECKPOINT_RE = re.compile(r"round-(\d+)\.safetensors$")
CLIENT_COLUMNS = (
    "round", "node", "partition_id", "status", "reason", "num_examples", "train_loss",
    "train_accuracy", "epsilon", "epsilon_rdp", "delta", "noise_multiplier", "sample_rate",
    "steps", "max_grad_norm", "ledger_hash", "ledger_count",
)  # fmt: skip


PROGRESS_FILE = "progress.json"
"""Where a running round is: whom it waits for (the coordinator's terminal reads it live)."""


def write_progress(run_dir: Path, progress: dict[str, Any]) -> None:
    atomic_write_json(Path(run_dir) / PROGRESS_FILE, {**progress, "time": utc_now()})


def read_progress(run_dir: Path) -> dict[str, Any] | None:
    """The latest progress, or ``None`` (no file yet, or one being replaced)."""
    try:
        return json.loads((Path(run_dir) / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return None


def round_report(row: dict[str, Any]) -> list[str]:
    """A round as the coordinator's terminal shows it: the headline, one line per site by name
    with the reason for anything but ``ok``, and a warning when no site trained."""
    accuracy = round_accuracy(row)
    shown = "n/a" if accuracy is None else f"{accuracy:.3f}"
    clients = row.get("clients", [])
    if row.get("round") == 0:
        return [f"round 0: accuracy {shown} (initial model)"]
    ok = [c for c in clients if c.get("status") == "ok"]
    lines = [f"round {row.get('round')}: accuracy {shown} ({len(ok)} of {len(clients)} sites "
             "trained)"]  # fmt: skip
    for c in clients:
        reason = f": {c['reason']}" if c.get("reason") else ""
        lines.append(f"  {c.get('node')} {c.get('status')}{reason}")
    if not ok:
        lines.append(f"warning: round {row.get('round')}: no site trained")
    return lines


def round_accuracy(row: dict[str, Any]) -> float | None:
    """The server's accuracy where it may evaluate, else the sites' noised federated one."""
    for source in ("server", "federated"):
        value = (row.get(source) or {}).get("accuracy")
        if value is not None:
            return float(value)
    return None


def progress_line(progress: dict[str, Any]) -> str | None:
    """``round 3: waiting for hospital-c (connecting)``, or ``None`` if nobody is awaited."""
    sites = ", ".join(progress.get("sites") or [])
    if not sites:
        return None
    phase = progress.get("phase")
    if phase == "without":
        return f"round {progress.get('round')}: goes on without {sites} (round timeout)"
    what = "to connect" if phase == "connecting" else "to answer"
    return f"round {progress.get('round')}: waiting for {sites} {what}"


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class RunRecorder:
    """Writes one run folder; the single place that knows its layout."""

    run_dir: Path
    scenario: ScenarioConfig
    run_id: str
    engine: str = "simulation"
    transport: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / METRICS_FILE

    def start(self) -> None:
        atomic_write_text(self.run_dir / "scenario.toml", scenario_to_toml(self.scenario))
        info = self.read_run_info() or {}
        info.update(
            run_id=self.run_id,
            scenario=self.scenario.name,
            config_hash=config_hash(self.scenario.without_budgets()),
            code_version=__version__,
            python=platform.python_version(),
            engine=self.engine,
            transport=self.transport,
            strategy=self.scenario.strategy.model_dump(mode="json"),
            dp=self.scenario.dp.model_dump(mode="json"),
            status="running",
        )
        info.setdefault("started", utc_now())
        atomic_write_json(self.run_dir / "run.json", info)

    def finish(self, *, model_hash: str | None, status: str = "finished") -> None:
        self.update_info(finished=utc_now(), model_hash=model_hash, status=status)

    def update_info(self, **fields: Any) -> None:
        info = self.read_run_info() or {}
        info.update(fields)
        atomic_write_json(self.run_dir / "run.json", info)

    def read_run_info(self) -> dict[str, Any] | None:
        path = self.run_dir / "run.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def record_round(
        self,
        rnd: int,
        server: dict[str, Any],
        clients: list[dict[str, Any]],
        federated: dict[str, Any] | None = None,
    ) -> None:
        row = {"round": rnd, "time": utc_now(), "server": server, "clients": clients}
        if federated:
            row["federated"] = federated
        row = finite_json(row)
        append_line_durably(self.metrics_path, json.dumps(row, sort_keys=True, allow_nan=False))
        self._write_clients_csv()

    def rounds(self) -> list[dict[str, Any]]:
        return read_metrics(self.run_dir)

    def _write_clients_csv(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CLIENT_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in self.rounds():
            for client in row["clients"]:
                head = client.get("ledger_head") or {}
                writer.writerow(
                    {**client, "round": row["round"], "ledger_hash": head.get("hash"),
                     "ledger_count": head.get("count")}
                )  # fmt: skip
        atomic_write_text(self.run_dir / "clients.csv", buf.getvalue())

    def checkpoint_path(self, rnd: int) -> Path:
        return self.run_dir / "checkpoints" / f"round-{rnd:04d}.safetensors"


def latest_checkpoint(run_dir: Path) -> tuple[int, Path] | None:
    found = [
        (int(m.group(1)), p)
        for p in (Path(run_dir) / "checkpoints").glob("round-*.safetensors")
        if (m := CHECKPOINT_RE.search(p.name))
    ]
    return max(found) if found else None


def load_run_scenario(run_dir: Path) -> ScenarioConfig:
    path = Path(run_dir) / "scenario.toml"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: not a run folder (no scenario.toml)")
    return load_toml(ScenarioConfig, path)


def finite_json(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by ``None`` (JSON has neither; an
    unbounded epsilon is ``null`` in the records, as in the ledger)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    return value
