"""`fedmodel data`: look at a dataset the way the federation will see it.

``stats`` loads a dataset exactly as training does (same config, limits and seeds), partitions
its training rows, and prints per-partition sizes, label histograms and the label skew, so a
scenario's heterogeneity can be checked before any training is spent on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fedmodel.cli.errors import cli_errors
from fedmodel.config import DataConfig, PartitionConfig, parse_config
from fedmodel.data import DataError, check_dataset, load_dataset
from fedmodel.data.heart import heart_task, write_heart_site_files
from fedmodel.data.site import check_site
from fedmodel.data.stats import PartitionStats, partition_stats
from fedmodel.errors import ConfigError
from fedmodel.io import atomic_write_text
from fedmodel.node_config import load_node_config
from fedmodel.scenarios import _dump_toml
from fedmodel.task import load_task

app = typer.Typer(
    help="Datasets: statistics per partition; a site's own files checked against a task.",
    no_args_is_help=True,
    add_completion=False,
)

_DEFAULT_PARTITIONS = 2


@app.callback()
def _group() -> None:
    """Datasets: statistics per partition."""


def stats_table(stats: PartitionStats) -> Table:
    """One row per partition: samples and the count of each class."""
    table = Table(title=f"{stats.dataset}: {stats.scheme} partitions of the training rows")
    table.add_column("partition")
    table.add_column("samples", justify="right")
    for name in stats.class_names:
        table.add_column(name, justify="right")
    for name, row in zip(stats.partition_names, stats.histograms, strict=True):
        table.add_row(name, str(int(row.sum())), *(str(int(c)) for c in row))
    total = stats.histograms.sum(axis=0)
    table.add_row("total", str(int(total.sum())), *(str(int(c)) for c in total), style="bold")
    return table


@app.command("stats")
@cli_errors
def stats(
    dataset: Annotated[str, typer.Argument(help="Dataset name, e.g. mnist, heart, adult.")],
    partition: Annotated[
        str, typer.Option("--partition", help="Scheme: iid, dirichlet or natural.")
    ] = "iid",
    num_partitions: Annotated[
        int | None,
        typer.Option(help="Partitions (default: the number of sites for natural, else 2)."),
    ] = None,
    alpha: Annotated[float, typer.Option(help="Dirichlet concentration.")] = 0.5,
    seed: Annotated[int, typer.Option(help="Seed for the split and the partitions.")] = 0,
    train_limit: Annotated[int | None, typer.Option(help="Seeded slice of training rows.")] = None,
) -> None:
    """Samples and label histogram per partition, plus the label skew (mean TV distance)."""
    check_dataset(dataset)
    data_cfg = parse_config(
        DataConfig, {"dataset": dataset, "train_limit": train_limit, "seed": seed}, "data stats"
    )
    splits = load_dataset(data_cfg)
    if num_partitions is None:
        natural = partition == "natural" and splits.group_names
        num_partitions = len(splits.group_names) if natural else _DEFAULT_PARTITIONS
    part_cfg = parse_config(
        PartitionConfig,
        {"scheme": partition, "num_partitions": num_partitions, "alpha": alpha, "seed": seed},
        "data stats",
    )
    result = partition_stats(splits, part_cfg)
    console = Console(width=max(100, 24 + 10 * len(result.class_names)))
    console.print(stats_table(result))
    console.print(f"label skew (mean TV distance to the global distribution): {result.skew:.4f}")


@app.command("check")
@cli_errors
def check(
    config: Annotated[Path, typer.Option("--config", help="The site's node.toml.")],
    task: Annotated[
        Path, typer.Option("--task", help="A task TOML, or a scenario with a [task] table.")
    ],
) -> None:
    """Check this site's files against a declared task: rows, label counts, every problem.

    Local only: it reads the files named in node.toml [data] and prints here; nothing is sent.
    Exit 2 when any file breaks the task (one line per problem: file, column, first bad row).
    """
    node = load_node_config(config)
    files = node.data.site_files()
    if files is None:
        raise ConfigError(f"{config}: data.path: this site names no files of its own")
    declared = load_task(task)
    result = check_site(declared, files)
    if result.problems:  # every problem, one line each: a site fixes its export in one pass
        for problem in result.problems:
            typer.echo(f"error: {problem.line()}", err=True)
        raise typer.Exit(2)
    console = Console()
    table = Table(title=f"{node.name}: files for task {declared.name!r}")
    table.add_column("split")
    table.add_column("images" if declared.kind == "image" else "rows", justify="right")
    for name in declared.classes:
        table.add_column(f"label {name}", justify="right")
    for split, rows in result.rows.items():
        table.add_row(split, str(rows), *(str(c) for c in result.label_counts[split]))
    console.print(table)
    console.print(f"ok: {', '.join(str(f) for f in result.files)} match task {declared.name!r}")


@app.command("export")
@cli_errors
def export(
    dataset: Annotated[str, typer.Argument(help="Packaged dataset with natural sites: heart.")],
    out_dir: Annotated[Path, typer.Argument(help="Folder for one CSV pair per site + task.toml.")],
) -> None:
    """Write a packaged dataset as per-site files and its declared task, as sites would hold
    them: the starting point for trying fedmodel on files before using your own."""
    if dataset != "heart":
        raise DataError(f"export: only 'heart' has natural sites to export, not {dataset!r}")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"{out_dir}: not empty; export writes into a new folder")
    task_text = _dump_toml({"task": heart_task().model_dump(mode="json", exclude_none=True)})
    files = write_heart_site_files(out_dir)
    task_file = out_dir / "task.toml"
    atomic_write_text(task_file, task_text)
    for name, (train, test) in files.items():
        typer.echo(f"{name}: {train.name}, {test.name}")
    typer.echo(f"task: {task_file}")
