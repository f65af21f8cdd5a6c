"""Run a scenario on Flower's Simulation Engine (Ray): many virtual nodes, one machine.

The ServerApp runs in this process (a thread), so typed settings and the live progress callback
reach it directly; the ClientApp runs in Ray actors and learns everything from the server's
messages plus its own ``node.toml``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from fedmodel.errors import FedmodelError
from server.federation import RoundCallback, ServerSettings, central_accountant
from server.records import RunRecorder, latest_checkpoint

FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "RAY_DEDUP_LOGS": "1",
}


class SimulationError(FedmodelError):
    """The simulation did not produce a finished run."""


def quiet_flower_env() -> None:
    """Flower phones home and installs runtime deps by default; fedmodel never wants either."""
    for key, value in FLOWER_ENV.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("FLWR_HOME", tempfile.mkdtemp(prefix="fedmodel-flwr-"))


def simulate(settings: ServerSettings, *, verbose: bool = False) -> Path:
    from fedmodel.sim_nodes import declare_sim_nodes

    quiet_flower_env()
    if settings.resume and latest_checkpoint(settings.run_dir) is None:
        raise SimulationError(f"{settings.run_dir}: --resume needs a checkpoint, none found")
    central_accountant(settings)  # an over-budget central-DP run fails here, not mid-run
    settings.sim_nodes_dir = settings.sim_nodes_dir or settings.run_dir / "nodes"
    declare_sim_nodes(settings.sim_nodes_dir, settings.scenario)  # folders: on first use
    _run_engine(settings, verbose=verbose)
    info = RunRecorder(settings.run_dir, settings.scenario, "").read_run_info() or {}
    if info.get("status") == "failed":
        raise SimulationError(f"{settings.run_dir}: run failed: {info.get('failure')}", exit_code=1)
    if info.get("status") != "finished":
        raise SimulationError(
            f"{settings.run_dir}: simulation ended without finishing (see the Flower log above)"
        )
    return settings.run_dir


def _run_engine(settings: ServerSettings, *, verbose: bool) -> None:
    from flwr.simulation import run_simulation

    from fedmodel.sim_linkstate import indexed_link_state

    if settings.scenario.security.secure_aggregation:  # SecAgg+ exists only on the legacy API
        from clients.secagg_client import app as client_app
        from server.secagg_app import build_secagg_server_app as build_server_app
    else:
        from clients.client_app import app as client_app
        from server.server_app import build_server_app

    fed = settings.scenario.federation
    backend_config = {
        "client_resources": {"num_cpus": fed.client_cpus, "num_gpus": fed.client_gpus},
        "init_args": {
            "num_cpus": fed.ray_num_cpus or os.cpu_count() or 1,
            "logging_level": "ERROR" if not verbose else "INFO",
            "log_to_driver": verbose,
        },
    }
    if fed.client_gpus > 0:
        backend_config["init_args"]["num_gpus"] = 1
    flwr_logger = logging.getLogger("flwr")
    previous = flwr_logger.level
    if not verbose:
        flwr_logger.setLevel(logging.WARNING)
    try:
        with indexed_link_state():  # Flower scans every message for every node otherwise
            run_simulation(
                server_app=build_server_app(settings),
                client_app=client_app,
                num_supernodes=fed.num_clients,
                backend_config=backend_config,
            )
    finally:
        flwr_logger.setLevel(previous)


__all__ = ["RoundCallback", "SimulationError", "simulate"]
