"""``fedmodel export RUN_DIR --quantize int8``: a smaller copy of the run's final model.

The int8 copy goes next to the float one (``RUN_DIR/model-int8/`` beside ``RUN_DIR/model/``;
for a model folder such as ``RUN_DIR/students/cnn-small``, ``cnn-small-int8`` beside it), and
``fedmodel predict`` runs either. Quantising the exported DP model is post-processing: it reads
no data and spends no privacy. What is and is not quantised, and why it is stored as plain
tensors, is in :mod:`fedmodel.training.quantize`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from fedmodel.cli.errors import cli_errors
from fedmodel.errors import ConfigError

QUANTIZE_CHOICES = ("int8",)


@cli_errors
def export(
    run_dir: Annotated[Path, typer.Argument(help="run folder (its model/) or a model folder")],
    quantize: Annotated[str, typer.Option("--quantize", help="int8: dynamic quantisation")],
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Write a dynamically quantised copy of the exported model next to the float one."""
    from fedmodel.training.checkpoint import load_weights
    from fedmodel.training.export import WEIGHTS_NAME, load_exported, model_dir_of
    from fedmodel.training.footprint import bytes_on_disk
    from fedmodel.training.quantize import export_quantized

    if quantize not in QUANTIZE_CHOICES:
        choices = ", ".join(QUANTIZE_CHOICES)
        raise ConfigError(f"--quantize: unknown {quantize!r} (one of {choices})")
    source = model_dir_of(run_dir)
    model, meta = load_exported(source)
    if "quantization" in meta:
        raise ConfigError(f"{source}: already a quantised model")
    out_dir = source.with_name(f"{source.name}-{quantize}")
    export_quantized(out_dir, model, meta, str(meta["weights_sha256"]))
    _, written = load_weights(out_dir / WEIGHTS_NAME)
    result = {
        "model": str(out_dir),
        "float_bytes": bytes_on_disk(source),
        "int8_bytes": bytes_on_disk(out_dir),
        "quantized_modules": written["quantization"]["modules"],
        "float_modules": written["quantization"]["float_modules"],
    }
    result["size_ratio"] = result["float_bytes"] / result["int8_bytes"]
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo(
        f"wrote {out_dir}: {result['int8_bytes']:,} bytes ({result['float_bytes']:,} float, "
        f"{result['size_ratio']:.2f}x smaller)"
    )
    typer.echo(f"  int8 (dynamic): {', '.join(result['quantized_modules'])}")
    typer.echo(f"  kept float:     {', '.join(result['float_modules']) or 'none'}")
