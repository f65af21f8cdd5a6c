"""Optimisers see only trainable parameters; schedules have the documented shapes."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from fedmodel.config import OptimizerConfig
from fedmodel.training import TrainingError
from fedmodel.training.optim import build_optimizer, build_scheduler, lr_factor


def model_with_frozen_layer() -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    return model


@pytest.mark.parametrize(
    ("name", "cls"),
    [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)],
)
def test_optimizer_covers_trainable_params_only(name, cls):
    model = model_with_frozen_layer()
    opt = build_optimizer(model, OptimizerConfig(name=name, lr=0.01, weight_decay=0.1))
    assert isinstance(opt, cls)
    params = [p for g in opt.param_groups for p in g["params"]]
    assert {id(p) for p in params} == {id(p) for p in model[1].parameters()}
    assert opt.param_groups[0]["weight_decay"] == 0.1


def test_weight_decay_leaves_frozen_weights_untouched():
    model = model_with_frozen_layer()
    frozen = model[0].weight.detach().clone()
    opt = build_optimizer(model, OptimizerConfig(name="adamw", lr=0.1, weight_decay=0.5))
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    assert torch.equal(model[0].weight, frozen)


def test_no_trainable_parameters_is_an_error():
    model = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(TrainingError, match="no trainable"):
        build_optimizer(model, OptimizerConfig())


def factors(cfg: OptimizerConfig, total: int) -> list[float]:
    f = lr_factor(cfg, total)
    return [f(k) for k in range(total)]


def test_warmup_is_linear_then_constant():
    assert factors(OptimizerConfig(warmup_steps=4), 6) == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_cosine_decays_from_one_to_zero_after_warmup():
    f = lr_factor(OptimizerConfig(schedule="cosine", warmup_steps=2), 12)
    assert f(0) == 0.5 and f(1) == 1.0 and f(2) == 1.0
    assert math.isclose(f(7), 0.5)  # half-way through the 10 decay steps
    assert f(12) == pytest.approx(0.0, abs=1e-12)
    decay = [f(k) for k in range(2, 13)]
    assert all(a >= b for a, b in itertools.pairwise(decay))


def test_step_schedule_multiplies_by_gamma_every_step_size():
    cfg = OptimizerConfig(schedule="step", step_size=3, gamma=0.5)
    assert factors(cfg, 7) == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]


def test_scheduler_drives_the_optimizer_lr():
    model = nn.Linear(2, 2)
    cfg = OptimizerConfig(lr=0.2, schedule="step", step_size=1, gamma=0.5)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, total_steps=3)
    lrs = []
    for _ in range(3):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.2, 0.1, 0.05])
