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

DEFAULTS = {"scenario": "mnist-cnn", "num-server-rounds": 0, "out-dir": "runs/flwr-run"}


def settings_from_run_config(context: Context) -> ServerSettings:
    rc = {**DEFAULTS, **dict(context.run_config)}
    scenario = load_scenario(str(rc["scenario"]))
    if int(rc["num-server-rounds"]) > 0:
        scenario = apply_overrides(
            scenario, {"federation.rounds": int(rc["num-server-rounds"])}, "num-server-rounds"
        )
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
