"""``fedmodel distill RUN_DIR --student NAME --data PUBLIC``: a smaller model from the run's.

Trains a registered student on the final model's soft labels over public rows the server owns
(never a site's), writes it to ``RUN_DIR/students/NAME/`` (``fedmodel predict`` runs it; the
next ``fedmodel report`` lists it) and prints its accuracy, size and speed beside the teacher's.
Post-processing of the DP global model: no privacy is spent. See :mod:`fedmodel.distill`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from fedmodel.cli.errors import cli_errors

STUDENT_HELP = "cnn-small (image), mlp-small (tabular) or minilm-2l (text)"
DATA_HELP = "mnist-test, rotten-tomatoes-test, or a file of unlabelled rows (.npy, .csv, .txt)"


@cli_errors
def distill(
    run_dir: Annotated[Path, typer.Argument(help="run folder with an exported model/")],
    student: Annotated[str, typer.Option("--student", help=STUDENT_HELP)],
    data: Annotated[str, typer.Option("--data", help=DATA_HELP)],
    temperature: Annotated[float, typer.Option(help="softmax temperature")] = 4.0,
    epochs: Annotated[int, typer.Option(help="passes over the distillation rows")] = 20,
    limit: Annotated[int | None, typer.Option(help="at most this many rows per part")] = None,
    seed: Annotated[int, typer.Option(help="split, initial weights and batch order")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print the record as JSON")] = False,
) -> None:
    """Distil the run's final model into a smaller student on the server's public rows."""
    from pydantic import ValidationError

    from fedmodel.distill import DistillConfig, distill_run
    from fedmodel.errors import ConfigError

    try:
        cfg = DistillConfig(temperature=temperature, epochs=epochs, limit=limit, seed=seed)
    except ValidationError as err:
        first = err.errors()[0]
        raise ConfigError(f"--{first['loc'][0]}: {first['msg']}") from None
    result = distill_run(run_dir, student, data, cfg)
    if as_json:
        typer.echo(json.dumps(result.record))
        return
    typer.echo(f"wrote {result.model_dir} ({result.record['privacy']})")
    for line in summary_lines(result.record):
        typer.echo(f"  {line}")


def summary_lines(record: dict[str, Any]) -> list[str]:
    """Student beside teacher: accuracy on the evaluation rows, agreement, size, speed."""
    s, t = record["student_size"], record["teacher_size"]

    def acc(value: float | None) -> str:
        return "n/a (unlabelled)" if value is None else f"{value:.2%}"

    return [
        f"accuracy on {record['eval_rows']} evaluation rows: student "
        f"{acc(record['student_accuracy'])}, teacher {acc(record['teacher_accuracy'])}; "
        f"agreement {record['agreement']:.2%}",
        f"parameters: student {s['parameters']:,}, teacher {t['parameters']:,} "
        f"({t['parameters'] / s['parameters']:.1f}x fewer)",
        f"bytes: student {s['bytes_on_disk']:,}, teacher {t['bytes_on_disk']:,}",
        f"CPU ms per batch of {s['batch_size']} ({s['threads']} thread): student "
        f"{s['ms_per_batch']:.2f}, teacher {t['ms_per_batch']:.2f}",
    ]
