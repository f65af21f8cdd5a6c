"""``fedmodel export --quantize int8``: an int8 copy that predicts like the float model."""

from __future__ import annotations

import json

import numpy as np
from safetensors.torch import load_file

from fedmodel.training.export import load_exported
from fedmodel.training.inference import predict
from tests.distill.conftest import invoke, one_error_line


def test_int8_copy_predicts_the_float_models_class(teacher):
    result = invoke("export", str(teacher.run_dir), "--quantize", "int8", "--json")
    assert result.exit_code == 0, result.output
    written = json.loads(result.output)
    assert written["quantized_modules"] == ["classifier.1", "classifier.4"]
    assert written["float_modules"] == ["features.0", "features.1", "features.4", "features.5"]
    assert written["int8_bytes"] < 0.6 * written["float_bytes"]  # the convolutions stay float

    float_model, _ = load_exported(teacher.run_dir / "model")
    int8_model, meta = load_exported(teacher.run_dir / "model-int8")
    assert meta["quantization"]["source_weights_sha256"] == teacher.model_hash
    float_pred, _ = predict(float_model, teacher.test_images)
    int8_pred, _ = predict(int8_model, teacher.test_images)
    assert float((float_pred == int8_pred).float().mean()) >= 0.99

    stored = load_file(teacher.run_dir / "model-int8" / "model.safetensors")
    assert stored["classifier.1.weight.int8"].dtype.itemsize == 1  # int8 on disk, not float


def test_predict_runs_the_int8_copy(teacher, tmp_path):
    invoke("export", str(teacher.run_dir), "--quantize", "int8")
    images = tmp_path / "images.npy"
    np.save(images, teacher.test_images[:8].numpy())
    rows = {}
    for folder in ("model", "model-int8"):
        result = invoke("predict", str(teacher.run_dir / folder), str(images), "--json")
        assert result.exit_code == 0, result.output
        rows[folder] = [json.loads(line)["label"] for line in result.output.splitlines()]
    assert len(rows["model-int8"]) == 8
    assert sum(a == b for a, b in zip(rows["model"], rows["model-int8"], strict=True)) >= 7


def test_export_bad_input_is_one_line(teacher, tmp_path):
    one_error_line(invoke("export", str(teacher.run_dir), "--quantize", "int4"), "--quantize")
    one_error_line(invoke("export", str(tmp_path), "--quantize", "int8"), "no exported model")
