"""``fedmodel server run``: submit one federated run to the running SuperLink with ``flwr run``.

The ServerApp runs inside the SuperLink's SuperExec, another process, so this module resolves
everything first and hands it over as files and run-config keys: the scenario (with command-line
overrides and ``num_clients`` = the nodes in server.toml) is written to ``RUN_DIR/scenario.toml``
and the run config points at it, with ``engine = "deployment"``, the absolute run folder, the
round timeout and what the transport enforces. ``flwr run ... --stream`` returns when the run
ends; the run folder's ``run.json`` then says whether it finished.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedmodel.config import ConfigError, ScenarioConfig
from fedmodel.io import atomic_write_text
from fedmodel.partitions import PARTITIONS_FILE, dump_assignment
from fedmodel.scenarios import _toml_value, apply_overrides, load_scenario, scenario_to_toml
from server import central_dp
from server.deploy.config import ServerConfig
from server.deploy.flower import CONNECTION, flower_bin, flower_env, write_connection
from server.deploy.processes import ServiceError, read_pid_file
from server.records import progress_line, read_metrics, read_progress

APP_ROOT = Path(__file__).resolve().parents[2]  # the fedmodel source tree: a Flower app


@dataclass(frozen=True)
class RunRequest:
    scenario: str
    rounds: int | None = None
    run_dir: Path | None = None
    min_nodes: int | None = None


def submit_run(
    cfg: ServerConfig,
    request: RunRequest,
    on_round: Callable[[dict[str, Any]], None],
    on_wait: Callable[[str], None] | None = None,
) -> Path:
    """Submit, stream Flower's log to a file, report each round, check the run finished."""
    if read_pid_file(cfg.pid_file) is None:
        raise ServiceError(f"no SuperLink running on this host for this config ({cfg.pid_file})")
    scenario = deployment_scenario(cfg, request)
    if scenario.central_dp.enabled:  # over budget: one line now, not a ServerApp failure later
        central_dp.check_budget(
            scenario, central_dp.new_accountant(scenario), scenario.federation.rounds
        )
    run_dir = _new_run_dir(cfg, request, scenario)
    atomic_write_text(run_dir / "scenario.toml", scenario_to_toml(scenario))
    run_config = _run_config_file(cfg, scenario, run_dir)
    write_connection(cfg.flwr_home, cfg.control_address)
    log_path = cfg.log_file.parent / f"run-{run_dir.name}.flwr.log"
    argv = [flower_bin("flwr"), "run", str(app_root()), CONNECTION, "--stream",
            "--run-config", str(run_config)]  # fmt: skip
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, env=flower_env(cfg.flwr_home), stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip
        try:
            _follow(
                proc, run_dir, on_round, lambda: read_pid_file(cfg.pid_file) is not None, on_wait
            )
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
            run_config.unlink(missing_ok=True)
    return _check_finished(run_dir, log_path, proc.returncode)


def deployment_scenario(cfg: ServerConfig, request: RunRequest) -> ScenarioConfig:
    """The scenario as the ServerApp will run it: one client per registered node."""
    scenario = load_scenario(request.scenario)
    if scenario.security.secure_aggregation:
        raise ConfigError(f"{request.scenario}: secure aggregation runs in simulation only")
    clients = len(cfg.nodes) or scenario.federation.num_clients
    min_nodes = request.min_nodes or scenario.strategy.min_nodes(clients)
    return apply_overrides(
        scenario,
        {
            "federation.rounds": request.rounds,
            "federation.num_clients": clients,
            "strategy.min_train_nodes": min_nodes,
        },
        "fedmodel server run",
    )


def app_root() -> Path:
    if not (APP_ROOT / "pyproject.toml").is_file():
        raise ConfigError(f"{APP_ROOT}: not the fedmodel source tree (no pyproject.toml)")
    return APP_ROOT


def _new_run_dir(cfg: ServerConfig, request: RunRequest, scenario: ScenarioConfig) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = (request.run_dir or cfg.run.out_dir / f"{scenario.name}-{stamp}").absolute()
    if (run_dir / "run.json").exists():
        raise ConfigError(f"{run_dir}: already holds a run; choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _run_config_file(cfg: ServerConfig, scenario: ScenarioConfig, run_dir: Path) -> Path:
    """The ``flwr run --run-config`` TOML: only keys listed in [tool.flwr.app.config]."""
    values: dict[str, Any] = {
        "engine": "deployment",
        "scenario": str(run_dir / "scenario.toml"),
        "out-dir": str(run_dir),
        "round-timeout": float(cfg.run.round_timeout),
        "transport-tls": cfg.tls is not None,
        "transport-node-auth": cfg.node_auth,
    }
    # every request is signed with the keys the sites pinned and every reply must be a
    # registered node's signed envelope, sealed or not
    values["server-keys-dir"] = str(cfg.server_keys_dir)
    values["registered-keys-dir"] = str(write_registry(cfg))
    text = "".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items())
    fd, name = tempfile.mkstemp(prefix="run-config-", suffix=".toml", dir=cfg.state_dir)
    with open(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    return Path(name)


def write_registry(cfg: ServerConfig) -> Path:
    """``<name>.ed25519.pub`` for every node with a ledger key: whose replies count."""
    nodes = [n for n in cfg.nodes if n.ledger_public_key is not None]
    if not nodes:
        raise ConfigError("server.toml: nodes need ledger_public_key (their replies are signed)")
    registry = cfg.registry_dir
    registry.mkdir(parents=True, exist_ok=True)
    for stale in registry.glob("*.ed25519.pub"):
        stale.unlink()
    for node in nodes:
        assert node.ledger_public_key is not None
        atomic_write_text(registry / f"{node.name}.ed25519.pub", node.ledger_public_key.read_text())
    table = registry / PARTITIONS_FILE
    if cfg.assignment():
        atomic_write_text(table, dump_assignment(cfg.assignment()))
    else:
        table.unlink(missing_ok=True)
    return registry


def _follow(
    proc: subprocess.Popen,
    run_dir: Path,
    on_round: Callable[[dict], None],
    superlink_up: Callable[[], bool],
    on_wait: Callable[[str], None] | None = None,
) -> None:
    """Wait for ``flwr run`` to return, reporting each round as the ServerApp records it and,
    while a round waits, whom it waits for (when that changes, and every 30 s).

    If the SuperLink goes away, ``flwr run --stream`` may wait for ever: give up on it then.
    """
    seen, said, said_at = 0, None, 0.0
    while True:
        if not superlink_up():
            raise ServiceError(f"{run_dir}: the SuperLink stopped during the run")
        done = proc.poll() is not None
        rounds = read_metrics(run_dir)  # a line being written is skipped
        for row in rounds[seen:]:
            on_round(row)
        seen = max(seen, len(rounds))
        line = _waiting_line(run_dir, len(rounds))
        if on_wait is not None and line and (line != said or time.monotonic() - said_at > 30):
            on_wait(line)
            said, said_at = line, time.monotonic()
        if done:
            return
        time.sleep(0.5)


def _waiting_line(run_dir: Path, rows: int) -> str | None:
    """Whom the running round waits for; nothing for a round already recorded (``rows``
    metrics rows: rounds 0 .. rows - 1)."""
    progress = read_progress(run_dir) or {}
    if int(progress.get("round", -1)) < rows:
        return None
    return progress_line(progress)


def _check_finished(run_dir: Path, log_path: Path, returncode: int | None) -> Path:
    try:
        info = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        info = {}
    if info.get("status") == "finished":
        return run_dir
    if info.get("status") == "failed":
        raise ServiceError(f"{run_dir}: run failed: {info.get('failure')}", exit_code=1)
    tail = _last_error(log_path)
    raise ServiceError(
        f"{run_dir}: run did not finish (flwr run exit {returncode}): {tail}; see {log_path}"
    )


def _last_error(log_path: Path) -> str:
    try:
        lines = [li.strip() for li in log_path.read_text(errors="replace").splitlines()]
    except OSError:
        return "no log"
    errors = [li for li in lines if "ERROR" in li or "Error" in li or "Exit Code" in li]
    return (errors or [li for li in lines if li] or ["no output"])[-1][:300]
