"""`fedmodel data`: look at a dataset the way the federation will see it.

``stats`` loads a dataset exactly as training does (same config, limits and seeds), partitions
its training rows, and prints per-partition sizes, label histograms and the label skew, so a
scenario's heterogeneity can be checked before any training is spent on it.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fedmodel.cli.errors import cli_errors
from fedmodel.config import DataConfig, PartitionConfig, parse_config
from fedmodel.data import check_dataset, load_dataset
from fedmodel.data.stats import PartitionStats, partition_stats

app = typer.Typer(
    help="Datasets: statistics per partition.", no_args_is_help=True, add_completion=False
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
