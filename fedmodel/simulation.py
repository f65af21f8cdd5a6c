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
from typing import Any

from fedmodel.errors import FedmodelError
from fedmodel.ray_backend import LOOPBACK_ENV, backend_config, use_loopback
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


# Flower 1.41 logs this on every ``run_simulation`` call. fedmodel stays on that entry point on
# purpose for now (docs/flower.md, "Why not `flwr run` underneath yet", with measurements), so
# the notice is dropped here, for that one message only; every other Flower warning still shows.
RUN_SIMULATION_DEPRECATION = "The `run_simulation` function is deprecated"
log = logging.getLogger(__name__)


class SimulationError(FedmodelError):
    """The simulation did not produce a finished run."""


class _KnownDeprecation(logging.Filter):
    """Drops Flower's ``run_simulation`` deprecation notice, and nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return RUN_SIMULATION_DEPRECATION not in record.getMessage()


def quiet_flower_env() -> None:
    """Flower phones home and installs runtime deps by default; fedmodel never wants either."""
    for key, value in FLOWER_ENV.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("FLWR_HOME", tempfile.mkdtemp(prefix="fedmodel-flwr-"))


def simulate(
    settings: ServerSettings, *, verbose: bool = False, ray_address: str | None = None
) -> Path:
    """Run the scenario; ``ray_address`` joins an existing Ray cluster instead of a private,
    loopback-only one (``fedmodel.ray_backend``)."""
    from fedmodel.sim_nodes import declare_sim_nodes

    quiet_flower_env()
    if settings.resume and latest_checkpoint(settings.run_dir) is None:
        raise SimulationError(f"{settings.run_dir}: --resume needs a checkpoint, none found")
    central_accountant(settings)  # an over-budget central-DP run fails here, not mid-run
    fed = settings.scenario.federation
    backend = backend_config(  # a bad address or a GPU share without a GPU: before any file
        fed, verbose=verbose, address=ray_address, cpu_count=fed.ray_num_cpus or os.cpu_count() or 1
    )
    if ray_address is None and not use_loopback():
        log.warning("ray was imported before %s was set: this run's Ray listens on the "
                    "machine's address, not only 127.0.0.1", LOOPBACK_ENV)  # fmt: skip
    settings.sim_nodes_dir = settings.sim_nodes_dir or settings.run_dir / "nodes"
    declare_sim_nodes(settings.sim_nodes_dir, settings.scenario)  # folders: on first use
    _run_engine(settings, backend, verbose=verbose)
    info = RunRecorder(settings.run_dir, settings.scenario, "").read_run_info() or {}
    if info.get("status") == "failed":
        raise SimulationError(f"{settings.run_dir}: run failed: {info.get('failure')}", exit_code=1)
    if info.get("status") != "finished":
        raise SimulationError(
            f"{settings.run_dir}: simulation ended without finishing (see the Flower log above)"
        )
    return settings.run_dir


def _run_engine(settings: ServerSettings, backend: dict[str, Any], *, verbose: bool) -> None:
    from flwr.simulation import run_simulation

    from fedmodel.sim_linkstate import indexed_link_state

    if settings.scenario.security.secure_aggregation:  # SecAgg+ exists only on the legacy API
        from clients.secagg_client import app as client_app
        from server.secagg_app import build_secagg_server_app as build_server_app
    else:
        from clients.client_app import app as client_app
        from server.server_app import build_server_app

    flwr_logger = logging.getLogger("flwr")
    previous, known = flwr_logger.level, _KnownDeprecation()
    if not verbose:
        flwr_logger.setLevel(logging.WARNING)
    flwr_logger.addFilter(known)
    try:
        with indexed_link_state():  # Flower scans every message for every node otherwise
            run_simulation(
                server_app=build_server_app(settings),
                client_app=client_app,
                num_supernodes=settings.scenario.federation.num_clients,
                backend_config=backend,
            )
    finally:
        flwr_logger.removeFilter(known)
        flwr_logger.setLevel(previous)


__all__ = ["RoundCallback", "SimulationError", "simulate"]
