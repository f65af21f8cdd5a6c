"""``fedmodel simulate``: a scenario on Flower's Simulation Engine, with live round progress."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedmodel.cli.errors import cli_errors
from fedmodel.scenarios import apply_overrides, load_scenario


@cli_errors
def simulate(
    scenario: Annotated[str, typer.Argument(help="built-in name (mnist-cnn, ...) or TOML path")],
    rounds: Annotated[int | None, typer.Option(help="federated rounds")] = None,
    clients: Annotated[int | None, typer.Option(help="number of virtual nodes")] = None,
    epsilon: Annotated[float | None, typer.Option(help="per-client target epsilon")] = None,
    train_limit: Annotated[int | None, typer.Option(help="training rows (seeded slice)")] = None,
    strategy: Annotated[str | None, typer.Option(help="fedavg, fedprox, fedadam, ...")] = None,
    client_cpus: Annotated[float | None, typer.Option(help="CPUs per virtual node")] = None,
    client_gpus: Annotated[float | None, typer.Option(help="GPU share per node, e.g. 0.05")] = None,
    out: Annotated[
        Path | None, typer.Option(help="run folder (default runs/<scenario>-<time>)")
    ] = None,
    resume: Annotated[
        Path | None, typer.Option(help="continue RUN_DIR from its last checkpoint")
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(help="join this Ray cluster (HOST:PORT) instead of a private local one"),
    ] = None,
    verbose: Annotated[bool, typer.Option(help="show Flower and Ray logs")] = False,
) -> None:
    """Run a federated DP scenario and write its run folder."""
    from fedmodel.ray_backend import parse_ray_address
    from fedmodel.simulation import simulate as run
    from server.federation import ServerSettings, central_accountant, resume_settings

    console = Console()
    if resume is not None:
        settings = resume_settings(resume)
        if rounds is not None:  # extend a finished run, e.g. 1 -> 2 rounds
            settings.scenario = apply_overrides(
                settings.scenario, {"federation.rounds": rounds}, "--rounds"
            )
    else:
        cfg = apply_overrides(
            load_scenario(scenario),
            {
                "federation.rounds": rounds,
                "federation.num_clients": clients,
                "dp.target_epsilon": epsilon,
                "data.train_limit": train_limit,
                "strategy.name": strategy,
                "federation.client_cpus": client_cpus,
                "federation.client_gpus": client_gpus,
            },
            "command line",
            clear=("dp.noise_multiplier",) if epsilon is not None else (),
        )
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        settings = ServerSettings(scenario=cfg, run_dir=out or Path("runs") / f"{cfg.name}-{stamp}")
    settings.run_dir = settings.run_dir.resolve()
    central_accountant(settings)  # an over-budget central-DP run: one line, before any display
    if ray_address is not None:
        ray_address = parse_ray_address(ray_address)
    with _progress(console) as progress:
        task = progress.add_task("rounds", total=settings.scenario.federation.rounds)

        def on_round(rnd: int, total: int, outcome: dict[str, Any]) -> None:
            acc = round_accuracy(outcome)
            eps = max((c.get("epsilon", 0.0) for c in outcome["clients"]), default=0.0)
            progress.update(
                task, completed=rnd, description=f"round {rnd}/{total} acc {acc:.3f} eps<={eps:.2f}"
            )
            for line in site_problems({"round": rnd, **outcome}):  # live, by site, with reasons
                progress.console.print(line, markup=False, highlight=False)

        settings.on_round = on_round
        run_dir = run(settings, verbose=verbose, ray_address=ray_address)
    console.print(_summary_table(run_dir))
    for line in idle_round_warnings(run_dir):
        console.print(f"[yellow]warning:[/yellow] {line}")
    console.print(f"run folder: [bold]{run_dir}[/bold]")


def site_problems(row: dict[str, Any]) -> list[str]:
    """The lines of :func:`server.records.round_report` worth showing during a simulation: a
    site that did not train, with its reason, and a round in which none did."""
    from server.records import round_report

    lines = round_report(row)[1:]
    return [f"round {row['round']}: {li.strip()}" if li.startswith("  ") else li
            for li in lines if not li.endswith(" ok")]  # fmt: skip


def idle_round_warnings(run_dir: Path) -> list[str]:
    """Rounds in which no node's update was aggregated, with the nodes' own reasons.

    A run whose every node refuses still "finishes" (the model simply never moves), so this is
    said out loud: e.g. a no-DP scenario meets virtual nodes whose policy requires DP-SGD.
    """
    from server.records import read_metrics

    warnings = []
    for row in read_metrics(run_dir):
        clients = row["clients"]
        if row["round"] == 0 or any(c["status"] == "ok" for c in clients):
            continue
        reasons = sorted({f"{c['status']}: {c.get('reason')}" for c in clients}) or ["no replies"]
        warnings.append(f"round {row['round']}: no update was aggregated ({'; '.join(reasons)})")
    return warnings


def round_accuracy(row: dict[str, Any]) -> float:
    """:func:`server.records.round_accuracy`, NaN where nobody evaluated (for the display)."""
    from server.records import round_accuracy as recorded

    value = recorded(row)
    return float("nan") if value is None else value


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=False,
    )  # fmt: skip


def _summary_table(run_dir: Path) -> Table:
    from server.records import read_metrics

    table = Table(title="federated run")
    for col in ("round", "accuracy", "f1", "clients ok", "refused", "max epsilon"):
        table.add_column(col, justify="right")
    for row in read_metrics(run_dir):
        clients = row["clients"]
        ok = [c for c in clients if c["status"] == "ok"]
        refused = [c for c in clients if c["status"] == "refused"]
        eps = max((c.get("epsilon", 0.0) for c in ok), default=0.0)
        s = row["server"]
        f1 = f"{s['f1']:.4f}" if "f1" in s else "-"
        table.add_row(
            str(row["round"]), f"{round_accuracy(row):.4f}", f1,
            str(len(ok)), str(len(refused)), f"{eps:.3f}",
        )  # fmt: skip
    return table
