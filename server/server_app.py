"""The Flower ServerApp: a page, as in Flower's examples; the work is in ``federation``.

``flwr run .`` loads ``app`` and reads ``[tool.flwr.app.config]`` (merged with defaults here,
because Flower's Python simulation API passes an empty run config). ``fedmodel simulate`` builds
its own app with ``build_server_app(settings)`` so typed settings flow without string keys.

On ``flwr run``'s simulation the federation decides how many virtual sites there are (Flower's
local federation has 2 SuperNodes; ``--federation-config num-supernodes=N`` changes it): the
ServerApp counts them (``grid.get_node_ids()``) and runs the scenario on that many, or, when the
run config or the scenario fixes another number, fails at once naming the ``num-supernodes`` to
use, instead of waiting for nodes that will never come.

``fedmodel server run`` submits this same app to a deployment SuperLink with ``engine =
"deployment"``: the ServerApp then runs inside the SuperLink's SuperExec, in another process, so
everything it needs arrives as run-config keys (an absolute run folder, the round timeout, what
the transport is). Deployment nodes are real SuperNodes with their own ``node.toml``: no virtual
nodes are prepared, and the Grid is wrapped so replies are noticed within 0.2 s, not 3 s.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedmodel.config import ConfigError, ScenarioConfig
from fedmodel.ray_backend import check_joined
from fedmodel.scenarios import apply_overrides, load_scenario
from fedmodel.sim_nodes import declare_sim_nodes
from server.deploy.grid import PromptGrid
from server.federation import DEPLOYMENT, ServerSettings, run_federation

DEFAULTS = {
    "scenario": "mnist-cnn",
    "num-server-rounds": 0,
    "num-clients": 0,
    "train-limit": 0,
    "out-dir": "runs/flwr-run",  # deployment: the run folder itself (absolute)
    "engine": "simulation",  # or "deployment" (fedmodel server run)
    "round-timeout": 0,  # seconds a round waits for replies; 0 = 3600
    "transport-tls": False,  # deployment: what the SuperLink enforces, for run.json
    "transport-node-auth": False,
    "server-keys-dir": "",  # deployment: the ServerApp's sealing keys ("" = fresh per run)
    "registered-keys-dir": "",  # deployment: <node>.ed25519.pub of every registered node
    "ray-address": "",  # simulation: the Ray cluster the run must have joined (RAY_ADDRESS)
}
NODES_SETTLE_S = 1.0  # the node count must hold this long: Flower registers them one by one
NODES_WAIT_S = 120.0  # the simulation registers its nodes as the ServerApp starts
# run-config key -> scenario field; 0 keeps the scenario's own value
OVERRIDES = {
    "num-server-rounds": "federation.rounds",
    "num-clients": "federation.num_clients",
    "train-limit": "data.train_limit",
}


def settings_from_run_config(context: Context, grid: Grid | None = None) -> ServerSettings:
    rc = {**DEFAULTS, **dict(context.run_config)}
    if rc["engine"] == DEPLOYMENT:
        return _deployment_settings(rc, _scenario(rc))
    if rc["engine"] != "simulation":
        raise ConfigError(f"run config: engine {rc['engine']!r} is not simulation or deployment")
    scenario = _scenario(rc)
    if grid is not None:
        scenario = fit_to_federation(scenario, int(rc["num-clients"]), federation_size(grid))
    if str(rc["ray-address"]):
        check_joined(str(rc["ray-address"]))
    run_dir = Path(str(rc["out-dir"])).resolve() / f"run-{context.run_id}"
    nodes_dir = run_dir / "nodes"
    declare_sim_nodes(nodes_dir, scenario)
    return ServerSettings(scenario=scenario, run_dir=run_dir, sim_nodes_dir=nodes_dir)


def _scenario(rc: dict[str, Any]) -> ScenarioConfig:
    scenario = load_scenario(str(rc["scenario"]))
    overrides = {field: int(rc[key]) for key, field in OVERRIDES.items() if int(rc[key]) > 0}
    if "federation.num_clients" in overrides:
        overrides["strategy.min_train_nodes"] = overrides["federation.num_clients"]
    return apply_overrides(scenario, overrides, "run config")


def federation_size(grid: Grid, wait_s: float = NODES_WAIT_S) -> int:
    """How many SuperNodes the simulation runs: the count once it has held for a second."""
    deadline, last, since = time.monotonic() + wait_s, -1, time.monotonic()
    while time.monotonic() < deadline:
        count = len(list(grid.get_node_ids()))
        if count != last:
            last, since = count, time.monotonic()
        elif count > 0 and time.monotonic() - since >= NODES_SETTLE_S:
            return count
        time.sleep(0.1)
    raise ConfigError(f"the simulation registered no SuperNode within {wait_s:.0f}s")


def fit_to_federation(scenario: ScenarioConfig, asked: int, nodes: int) -> ScenarioConfig:
    """The scenario on the federation's ``nodes`` virtual sites, unless the run config
    (``num-clients``) or the scenario's own sites fix another number: then one line naming the
    ``num-supernodes`` that fits."""
    fixed = scenario.sites or scenario.partition.scheme == "natural"
    wanted = asked or (scenario.federation.num_clients if fixed else nodes)
    if wanted != nodes:
        why = f"run config num-clients={asked}" if asked else f"scenario {scenario.name!r}"
        raise ConfigError(
            f"{why} needs {wanted} sites, but this federation has {nodes} SuperNodes: run "
            f"`flwr run . --federation-config num-supernodes={wanted}`"
        )
    if scenario.federation.num_clients == nodes:
        return scenario
    overrides = {"federation.num_clients": nodes, "strategy.min_train_nodes": nodes}
    return apply_overrides(scenario, overrides, "federation")


def _deployment_settings(rc: dict[str, Any], scenario: ScenarioConfig) -> ServerSettings:
    """Real SuperNodes: no virtual nodes; the run folder and keys are paths on this host."""
    run_dir = Path(str(rc["out-dir"]))
    if not run_dir.is_absolute():
        raise ConfigError(f"run config: deployment out-dir must be absolute, got {run_dir}")
    if scenario.security.secure_aggregation:  # SecAgg+ needs the legacy apps (simulation only)
        raise ConfigError("run config: secure aggregation is not available in deployment")
    timeout = float(rc["round-timeout"])
    return ServerSettings(
        scenario=scenario,
        run_dir=run_dir,
        engine=DEPLOYMENT,
        transport={"tls": bool(rc["transport-tls"]), "node_auth": bool(rc["transport-node-auth"])},
        round_timeout=timeout if timeout > 0 else ServerSettings.round_timeout,
        server_keys_dir=_optional_dir(rc["server-keys-dir"]),
        registered_keys_dir=_optional_dir(rc["registered-keys-dir"]),
    )


def _optional_dir(value: Any) -> Path | None:
    return Path(str(value)) if str(value) else None


def build_server_app(settings: ServerSettings | None = None) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        resolved = settings or settings_from_run_config(context, grid)
        if resolved.engine == DEPLOYMENT:
            grid = PromptGrid(grid)
        run_federation(grid, resolved)

    return app


app = build_server_app()
