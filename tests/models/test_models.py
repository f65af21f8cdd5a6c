"""Every model builds, validates under Opacus, and trains one DP-SGD step (real Opacus)."""

from __future__ import annotations

import pytest
import torch
from opacus.validators import ModuleValidator
from torch import nn

from fedmodel.config import ModelConfig
from fedmodel.errors import FedmodelError
from fedmodel.models import ModelError, build_model
from fedmodel.models.cnn import feature_size


def test_cnn_forward_validates_and_dp_steps(dp_step):
    model = build_model(ModelConfig(name="cnn", dropout=0.1), (1, 28, 28), 10, seed=0)
    ModuleValidator.validate(model, strict=True)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())
    x = torch.randn(4, 1, 28, 28)
    assert model(x).shape == (4, 10)
    dp_step(model, x, torch.tensor([0, 1, 2, 3]))


def test_cnn_channels_follow_config():
    model = build_model(ModelConfig(name="cnn", cnn_channels=[8, 12]), (1, 28, 28), 3)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 12]
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 3)


def test_cnn_rejects_shapes_it_cannot_take():
    with pytest.raises(ModelError, match="cnn_channels"):
        build_model(ModelConfig(name="cnn", cnn_channels=[8, 8, 8]), (1, 28, 28), 10)
    with pytest.raises(ModelError, match="channels, height, width"):
        build_model(ModelConfig(name="cnn"), (784,), 10)
    assert feature_size(28, 28, 2) == (4, 4)


def test_mlp_forward_validates_and_dp_steps(dp_step):
    model = build_model(ModelConfig(name="mlp", hidden_sizes=[16, 8], dropout=0.2), (13,), 2)
    ModuleValidator.validate(model, strict=True)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(13, 16), (16, 8), (8, 2)]
    x = torch.randn(6, 13)
    dp_step(model, x, torch.tensor([0, 1, 0, 1, 1, 0]))
    with pytest.raises(ModelError, match="feature vectors"):
        build_model(ModelConfig(name="mlp"), (1, 28, 28), 10)


def test_registry_errors_are_fedmodel_errors():
    bogus = ModelConfig.model_construct(name="resnet")
    with pytest.raises(ModelError, match="unknown model"):
        build_model(bogus, (4,), 2)
    with pytest.raises(ModelError, match="at least 2 classes"):
        build_model(ModelConfig(name="mlp"), (4,), 1)
    assert issubclass(ModelError, FedmodelError)


def test_seeded_build_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = build_model(ModelConfig(name="cnn"), (1, 28, 28), 10, seed=7)
    assert torch.equal(torch.rand(1), expected_next)
    b = build_model(ModelConfig(name="cnn"), (1, 28, 28), 10, seed=7)
    c = build_model(ModelConfig(name="cnn"), (1, 28, 28), 10, seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
