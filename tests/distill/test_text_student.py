"""``minilm-2l``: the packaged MiniLM cut to two layers learns a MiniLM teacher's soft labels.

Slow (two MiniLM loads and a few CPU passes over a 6-layer encoder): the default run keeps the
image student's tests; this one checks the text path end to end - the run's held-out snippets
as the public set, tokenised to the teacher's length, and the int8 copy of a MiniLM.
"""

from __future__ import annotations

import pytest

from fedmodel.config import DataConfig, ModelConfig
from fedmodel.distill import DistillConfig, distill_run
from fedmodel.models import build_model
from fedmodel.training.export import export_model, load_exported
from fedmodel.training.quantize import export_quantized, quantized_modules

pytestmark = pytest.mark.slow
LENGTH = 32


def test_minilm_2l_student_on_held_out_snippets(tmp_path):
    cfg = ModelConfig(name="minilm")
    data = DataConfig(dataset="rotten-tomatoes", max_length=LENGTH)
    run_dir = tmp_path / "run"
    export_model(
        run_dir / "model",
        build_model(cfg, (LENGTH,), 2, seed=0),
        model_cfg=cfg,
        input_shape=(LENGTH,),
        num_classes=2,
        class_names=["rotten", "fresh"],
        extra={"task": "text", "data": data.model_dump(mode="json")},
    )
    record = distill_run(
        run_dir, "minilm-2l", "rotten-tomatoes-test", DistillConfig(epochs=1, limit=40)
    ).record
    assert record["public_data"]["distill_rows"] == record["eval_rows"] == 40
    assert record["student_accuracy"] is not None
    student, size = record["student_size"], record["teacher_size"]
    assert student["parameters"] < size["parameters"]  # four of six layers fewer
    assert student["ms_per_batch"] < size["ms_per_batch"]

    teacher, meta = load_exported(run_dir / "model")
    export_quantized(run_dir / "model-int8", teacher, meta, meta["weights_sha256"])
    int8, _ = load_exported(run_dir / "model-int8")
    assert len(quantized_modules(int8)) == 6 * 6 + 1  # q, k, v, out, 2 feed-forward per layer
