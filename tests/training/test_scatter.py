"""ScatterNet: fixed scattering computed once per site, a linear head trained with real Opacus."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Subset, TensorDataset

from fedmodel.config import DPConfig, ModelConfig, OptimizerConfig, TrainConfig
from fedmodel.data.preprocess import ShiftAugmented
from fedmodel.models import ModelError, build_model
from fedmodel.training import evaluate, train
from fedmodel.training.trunk import rows_through_trunk, trunk_rows

SCATTER = ModelConfig(name="scatternet")


def test_only_the_head_is_state_and_raw_images_equal_their_scattering():
    model = build_model(SCATTER, (1, 28, 28), 10, seed=0)
    assert list(model.state_dict()) == ["classifier.2.weight", "classifier.2.bias"]
    images = torch.randn(5, 1, 28, 28)
    features = model.trunk(images)
    assert features.shape == (5, 81, 7, 7)
    assert torch.allclose(model(images), model(features), atol=1e-6)


@pytest.mark.parametrize(
    ("shape", "cfg", "field"),
    [
        ((1, 30, 30), SCATTER, "model.scatter_scales"),
        ((1, 28, 28), SCATTER.model_copy(update={"scatter_groups": 10}), "model.scatter_groups"),
        ((28,), SCATTER, "scatternet expects images"),
    ],
)
def test_a_shape_it_cannot_take_is_a_model_error_naming_the_field(shape, cfg, field):
    with pytest.raises(ModelError, match=field):
        build_model(cfg, shape, 10)


def test_the_scattering_is_cached_per_site_and_reused(mnist_small, tmp_path):
    model = build_model(SCATTER, (1, 28, 28), 10, seed=0)
    rows = Subset(mnist_small.train, range(300))
    first = trunk_rows(model, rows, tmp_path, device=torch.device("cpu"))
    again = trunk_rows(model, rows, tmp_path, device=torch.device("cpu"))
    assert not first.hit and again.hit and first.key == again.key
    features, labels = again.dataset.tensors
    assert features.shape == (300, 81, 7, 7)
    images, expected = mnist_small.train.tensors
    assert torch.equal(labels, expected[:300])
    assert torch.allclose(features[:4], model.trunk(images[:4]), atol=1e-6)


def test_augmented_images_are_never_frozen_into_the_cache(mnist_small):
    """A shifted image is drawn afresh at every access; one cached draw would be other data."""
    model = build_model(SCATTER, (1, 28, 28), 10, seed=0)
    images, labels = mnist_small.train.tensors
    shifted = ShiftAugmented(images[:64], labels[:64], fill=0.0, seed=0)
    assert rows_through_trunk(model, shifted, None, TrainConfig()) is shifted
    plain = TensorDataset(images[:64], labels[:64])
    assert rows_through_trunk(model, plain, None, TrainConfig()) is not plain


def test_dp_training_on_the_scattering_learns_mnist(mnist_small):
    model = build_model(SCATTER, mnist_small.input_shape, 10, seed=0)
    cfg = TrainConfig(epochs=3, batch_size=128, device="cpu", seed=0)
    rows = rows_through_trunk(model, mnist_small.train, None, cfg)
    result = train(
        model,
        rows,
        train_cfg=cfg,
        optim_cfg=OptimizerConfig(name="sgd", lr=2.0, momentum=0.9),
        dp_cfg=DPConfig(noise_multiplier=1.0, max_grad_norm=0.1, accountant="rdp"),
        clipping="fast",
    )
    metrics = evaluate(model, mnist_small.test, batch_size=500, device="cpu")  # raw images
    assert metrics.accuracy > 0.85, metrics
    assert set(result.state_dict) == {"classifier.2.weight", "classifier.2.bias"}
