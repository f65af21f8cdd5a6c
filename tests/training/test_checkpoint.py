"""Weights files round-trip bit for bit; tampering and mismatches are clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from fedmodel.config import ModelConfig
from fedmodel.models import build_model
from fedmodel.training import TrainingError
from fedmodel.training.checkpoint import load_weights, save_weights, state_dict_equal
from fedmodel.training.export import export_model, load_exported
from fedmodel.training.inference import predict


def test_save_load_round_trip(tmp_path):
    state = build_model(ModelConfig(name="cnn"), (1, 28, 28), 10, seed=0).state_dict()
    path = save_weights(tmp_path / "checkpoints" / "round-0003.safetensors", state, {"round": 3})
    loaded, meta = load_weights(path)
    assert state_dict_equal(state, loaded)
    assert meta["round"] == 3 and meta["weights_file"] == "round-0003.safetensors"
    assert (tmp_path / "checkpoints" / "round-0003.json").is_file()
    assert not list((tmp_path / "checkpoints").glob(".*tmp"))


def test_tampered_or_mismatched_files_are_refused(tmp_path):
    state = {"w": torch.arange(4.0)}
    path = save_weights(tmp_path / "m.safetensors", state, {})
    other = save_weights(tmp_path / "other.safetensors", {"w": torch.zeros(4)}, {})
    sidecar = json.loads(other.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps(sidecar))
    with pytest.raises(TrainingError, match="sha256"):
        load_weights(path)
    path.with_suffix(".json").unlink()
    with pytest.raises(TrainingError, match="sidecar"):
        load_weights(path)
    with pytest.raises(TrainingError, match="no such"):
        load_weights(tmp_path / "absent.safetensors")


def test_export_load_predict(tmp_path):
    cfg = ModelConfig(name="mlp", hidden_sizes=[8])
    model = build_model(cfg, (5,), 3, seed=0)
    export_model(
        tmp_path / "model",
        model,
        model_cfg=cfg,
        input_shape=(5,),
        num_classes=3,
        class_names=["a", "b", "c"],
        metrics={"accuracy": 0.5},
    )
    loaded, meta = load_exported(tmp_path / "model")
    assert meta["class_names"] == ["a", "b", "c"] and meta["metrics"] == {"accuracy": 0.5}
    assert not loaded.training
    x = torch.randn(7, 5)
    labels, probs = predict(loaded, x, batch_size=3)
    ref_labels, ref_probs = predict(model, x)
    assert labels.shape == (7,) and probs.shape == (7, 3)
    assert torch.equal(labels, ref_labels) and torch.allclose(probs, ref_probs)
    assert torch.allclose(probs.sum(dim=1), torch.ones(7))


def test_weights_that_do_not_fit_the_described_model(tmp_path):
    cfg = ModelConfig(name="mlp", hidden_sizes=[8])
    export_model(
        tmp_path, build_model(cfg, (5,), 3), model_cfg=cfg, input_shape=(5,), num_classes=3
    )
    meta_path = tmp_path / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["model"]["hidden_sizes"] = [9]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(TrainingError, match="do not fit"):
        load_exported(tmp_path)
