"""The Flower ServerApp: a page, as in Flower's examples; the work is in ``federation``.

``flwr run .`` loads ``app`` and reads ``[tool.flwr.app.config]`` (merged with defaults here,
because Flower's Python simulation API passes an empty run config). ``fedmodel simulate`` builds
its own app with ``build_server_app(settings)`` so typed settings flow without string keys.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from clients.sim_nodes import prepare_sim_nodes
from fedmodel.scenarios import apply_overrides, load_scenario
from server.federation import ServerSettings, run_federation

DEFAULTS = {
    "scenario": "mnist-cnn",
    "num-server-rounds": 0,
    "num-clients": 0,
    "train-limit": 0,
    "out-dir": "runs/flwr-run",
}
# run-config key -> scenario field; 0 keeps the scenario's own value
OVERRIDES = {
    "num-server-rounds": "federation.rounds",
    "num-clients": "federation.num_clients",
    "train-limit": "data.train_limit",
}


def settings_from_run_config(context: Context) -> ServerSettings:
    rc = {**DEFAULTS, **dict(context.run_config)}
    scenario = load_scenario(str(rc["scenario"]))
    overrides = {field: int(rc[key]) for key, field in OVERRIDES.items() if int(rc[key]) > 0}
    if "federation.num_clients" in overrides:
        overrides["strategy.min_train_nodes"] = overrides["federation.num_clients"]
    scenario = apply_overrides(scenario, overrides, "run config")
    run_dir = Path(str(rc["out-dir"])).resolve() / f"run-{context.run_id}"
    nodes_dir = run_dir / "nodes"
    prepare_sim_nodes(nodes_dir, scenario)
    return ServerSettings(scenario=scenario, run_dir=run_dir, sim_nodes_dir=nodes_dir)


def build_server_app(settings: ServerSettings | None = None) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_federation(grid, settings or settings_from_run_config(context))

    return app


app = build_server_app()
