"""``fedmodel train-local``: train one model centrally, with or without DP, and export it.

Settings come from a ``LocalTrainConfig`` TOML file (``--config``), overridden by flags; the
merged result is validated as a whole, so a flag can never produce a config the file format
would reject. The exported folder (``--out``) is what ``fedmodel predict`` loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedmodel.cli.errors import cli_errors
from fedmodel.config import ConfigError, LocalTrainConfig, config_hash, load_toml, parse_config
from fedmodel.training.loop import TrainProgress, TrainResult
from fedmodel.training.metrics import EvalMetrics


def merged_config(
    path: Path | None, overrides: dict[str, dict[str, Any]], source: str
) -> LocalTrainConfig:
    """The TOML file (or defaults) with ``overrides`` (section -> field -> value) applied."""
    base = load_toml(LocalTrainConfig, path) if path is not None else LocalTrainConfig()
    data = base.model_dump(mode="json")
    for section, fields in overrides.items():
        data[section].update(fields)
    return parse_config(LocalTrainConfig, data, source)


def flag_overrides(
    *,
    dataset: str | None,
    model: str | None,
    epochs: int | None,
    batch_size: int | None,
    lr: float | None,
    no_dp: bool,
    noise_multiplier: float | None,
    epsilon: float | None,
    train_limit: int | None,
    seed: int | None,
) -> dict[str, dict[str, Any]]:
    """Flags as config overrides; ``--noise-multiplier`` and ``--epsilon`` replace each other."""
    if noise_multiplier is not None and epsilon is not None:
        raise ConfigError("give --noise-multiplier or --epsilon, not both")
    picked = {
        "data": {"dataset": dataset, "train_limit": train_limit},
        "model": {"name": model},
        "optimizer": {"lr": lr},
        "train": {"epochs": epochs, "batch_size": batch_size, "seed": seed},
    }
    out = {section: {k: v for k, v in f.items() if v is not None} for section, f in picked.items()}
    if no_dp:
        out["dp"] = {"enabled": False}
    elif noise_multiplier is not None:
        out["dp"] = {"enabled": True, "noise_multiplier": noise_multiplier, "target_epsilon": None}
    elif epsilon is not None:
        out["dp"] = {"enabled": True, "target_epsilon": epsilon, "noise_multiplier": None}
    return out


def results_table(result: TrainResult, test: EvalMetrics) -> Table:
    table = Table(title="train-local")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows: list[tuple[str, str]] = [
        ("test accuracy", f"{test.accuracy:.4f}"),
        ("test loss", f"{test.loss:.4f}"),
        ("test macro F1", f"{test.f1:.4f}"),
        ("test macro precision", f"{test.precision:.4f}"),
        ("test macro recall", f"{test.recall:.4f}"),
    ]
    if test.auroc is not None:
        rows.append(("test AUROC", f"{test.auroc:.4f}"))
    rows += [
        ("train accuracy", f"{result.train_accuracy:.4f}"),
        ("train loss", f"{result.train_loss:.4f}"),
        ("steps", str(result.steps)),
        ("training examples", str(result.num_examples)),
        ("seconds", f"{result.seconds:.1f}"),
    ]
    if result.dp:
        rows += [
            (f"epsilon ({result.accountant})", f"{result.epsilon:.4f}"),
            ("delta", f"{result.delta:g}"),
            ("noise multiplier", f"{result.noise_multiplier:.4f}"),
            ("max grad norm", f"{result.max_grad_norm:g}"),
            ("sample rate", f"{result.sample_rate:.6f}"),
            ("clipping", str(result.clipping)),
        ]
    else:
        rows.append(("differential privacy", "off"))
    for name, value in rows:
        table.add_row(name, value)
    return table


@cli_errors
def train_local(
    config: Annotated[
        Path | None, typer.Option("--config", help="LocalTrainConfig TOML file.")
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset, e.g. mnist, heart.")] = None,
    model: Annotated[str | None, typer.Option(help="Model: cnn, mlp or minilm.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Logical batch size.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    no_dp: Annotated[bool, typer.Option("--no-dp", help="Train without DP-SGD.")] = False,
    noise_multiplier: Annotated[
        float | None, typer.Option(help="DP noise multiplier (sigma).")
    ] = None,
    epsilon: Annotated[
        float | None, typer.Option(help="Target epsilon; noise is calibrated to reach it.")
    ] = None,
    train_limit: Annotated[int | None, typer.Option(help="Seeded slice of training rows.")] = None,
    seed: Annotated[int | None, typer.Option(help="Training seed.")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Export the model to this folder.")
    ] = None,
) -> None:
    """Train one model centrally, print its metrics, and export it with --out."""
    overrides = flag_overrides(
        dataset=dataset,
        model=model,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        no_dp=no_dp,
        noise_multiplier=noise_multiplier,
        epsilon=epsilon,
        train_limit=train_limit,
        seed=seed,
    )
    cfg = merged_config(config, overrides, str(config) if config else "train-local flags")
    run_local_training(cfg, out, Console(stderr=True), Console())


def run_local_training(
    cfg: LocalTrainConfig, out: Path | None, status: Console, console: Console
) -> TrainResult:
    """Load data, build, train, evaluate, print and (with ``out``) export."""
    from fedmodel.data import load_dataset
    from fedmodel.models import build_model
    from fedmodel.training import evaluate, train
    from fedmodel.training.export import export_model
    from fedmodel.training.trunk import rows_through_trunk

    splits = load_dataset(cfg.data)
    net = build_model(
        cfg.model,
        splits.input_shape,
        splits.num_classes,
        seed=cfg.train.seed,
        factory_sha256=cfg.model.factory_sha256,
    )
    with Progress(
        TextColumn("epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        console=status,
        transient=True,
    ) as bar:
        task = bar.add_task("train", total=None, epoch=1, loss=float("nan"))

        def on_step(p: TrainProgress) -> None:
            bar.update(task, completed=p.step, total=p.total_steps, epoch=p.epoch, loss=p.loss)

        result = train(
            net,
            rows_through_trunk(net, splits.train, None, cfg.train),  # frozen layers: once
            train_cfg=cfg.train,
            optim_cfg=cfg.optimizer,
            dp_cfg=cfg.dp,
            progress=on_step,
        )
    test_rows = rows_through_trunk(net, splits.test, None, cfg.train)
    test = evaluate(net, test_rows, batch_size=cfg.train.eval_batch_size, device=cfg.train.device)
    console.print(results_table(result, test))
    if out is not None:
        export_model(
            out,
            net,
            model_cfg=cfg.model,
            input_shape=splits.input_shape,
            num_classes=splits.num_classes,
            class_names=splits.class_names,
            metrics={"test": test.as_dict(), "train": result.metrics()},
            extra={
                "dataset": splits.name,
                "task": splits.task,
                "config": cfg.model_dump(mode="json"),
                "config_hash": config_hash(cfg),
            },
        )
        console.print(f"exported model to {out}")
    return result
