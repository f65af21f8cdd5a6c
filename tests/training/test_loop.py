"""``train`` / ``evaluate`` end to end on real MNIST, with real Opacus accounting."""

from __future__ import annotations

import pytest
import torch
from opacus.accountants import RDPAccountant
from torch.utils.data import TensorDataset

from fedmodel.config import DPConfig, ModelConfig, OptimizerConfig, TrainConfig
from fedmodel.models import build_model
from fedmodel.training import TrainingError, evaluate, train

DP = DPConfig(noise_multiplier=0.8, max_grad_norm=1.0, accountant="rdp")


def test_dp_training_learns_mnist_and_reports_exact_epsilon(mnist_small):
    model = build_model(ModelConfig(name="cnn"), mnist_small.input_shape, 10, seed=0)
    steps_seen = []
    result = train(
        model,
        mnist_small.train,
        train_cfg=TrainConfig(epochs=3, batch_size=128, device="cpu", seed=0),
        optim_cfg=OptimizerConfig(name="sgd", lr=1.0, momentum=0.5),
        dp_cfg=DP.model_copy(update={"noise_multiplier": 0.6}),
        clipping="fast",
        progress=lambda p: steps_seen.append(p.step),
    )
    metrics = evaluate(model, mnist_small.test, batch_size=500, device="cpu")
    assert metrics.accuracy > 0.8, metrics
    assert result.steps == 3 * 16 == len(steps_seen) and steps_seen[-1] == result.steps
    assert result.num_examples == 2000
    assert result.history == [(0.6, 1 / 16, 48)]
    independent = RDPAccountant()
    independent.history = [(0.6, 1 / 16, 48)]
    assert result.epsilon == pytest.approx(independent.get_epsilon(delta=1e-5), abs=1e-6)
    assert set(result.state_dict) == set(model.state_dict())
    assert all(not k.startswith("_module") for k in result.state_dict)
    assert all(v.device.type == "cpu" for v in result.state_dict.values())


def test_epsilon_is_cumulative_over_prior_history(digits):
    prior = [(1.0, 0.05, 30)]
    result = train(
        build_model(ModelConfig(name="mlp"), digits.input_shape, 10, seed=0),
        digits.train,
        train_cfg=TrainConfig(epochs=1, batch_size=256, device="cpu"),
        optim_cfg=OptimizerConfig(lr=0.1),
        dp_cfg=DP,
        prior_history=prior,
    )
    acc = RDPAccountant()
    acc.history = [*prior, *result.history]
    assert result.epsilon == pytest.approx(acc.get_epsilon(delta=1e-5), abs=1e-6)
    alone = RDPAccountant()
    alone.history = list(result.history)
    assert result.epsilon > alone.get_epsilon(delta=1e-5)


def quick(digits, seed: int, dp: DPConfig = DP, **kw):
    model = build_model(ModelConfig(name="mlp", dropout=0.2), digits.input_shape, 10, seed=0)
    cfg = TrainConfig(epochs=1, batch_size=128, device="cpu", seed=seed)
    return train(
        model, digits.train, train_cfg=cfg, optim_cfg=OptimizerConfig(lr=0.2), dp_cfg=dp, **kw
    )


def test_same_seed_same_weights_and_global_rng_untouched(digits):
    torch.manual_seed(99)
    expected = torch.rand(3)
    torch.manual_seed(99)
    a = quick(digits, seed=1)
    assert torch.equal(torch.rand(3), expected)
    b = quick(digits, seed=1)
    c = quick(digits, seed=2)
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert not all(torch.equal(a.state_dict[k], c.state_dict[k]) for k in a.state_dict)


def test_a_later_round_draws_fresh_noise_with_the_same_seed(digits):
    """Prior history enters the seed: round 2 must not replay round 1's noise and batches."""
    first = quick(digits, seed=1)
    second = quick(digits, seed=1, prior_history=first.history)
    assert not all(torch.equal(first.state_dict[k], second.state_dict[k]) for k in first.state_dict)


def test_fedprox_pulls_towards_the_global_weights(digits):
    global_model = build_model(ModelConfig(name="mlp", dropout=0.2), digits.input_shape, 10, seed=0)
    global_state = {k: v.clone() for k, v in global_model.state_dict().items()}

    def distance(state):
        return sum(float((state[k] - global_state[k]).norm() ** 2) for k in global_state) ** 0.5

    for dp in (DP, DPConfig(enabled=False)):
        free = quick(digits, seed=1, dp=dp)
        prox = quick(digits, seed=1, dp=dp, proximal=(5.0, global_state))
        assert distance(prox.state_dict) < 0.7 * distance(free.state_dict)
        same = quick(digits, seed=1, dp=dp, proximal=(0.0, global_state))
        assert all(torch.allclose(same.state_dict[k], free.state_dict[k]) for k in global_state)


def test_fedprox_rejects_mismatched_global_weights(digits):
    with pytest.raises(TrainingError, match="lack parameter"):
        quick(digits, seed=0, proximal=(0.1, {}))


def test_without_dp_no_privacy_fields(digits):
    result = quick(digits, seed=0, dp=DPConfig(enabled=False))
    assert result.epsilon is None and result.noise_multiplier is None and result.history == []
    assert not result.dp and result.steps == 12
    assert result.metrics()["history"] == [] and "state_dict" not in result.metrics()


def test_evaluate_restores_training_mode_and_reports_everything(digits):
    model = build_model(ModelConfig(name="mlp"), digits.input_shape, 10, seed=0).train()
    m = evaluate(model, TensorDataset(*digits.test[:50]), batch_size=16, device="cpu")
    assert model.training
    assert m.num_examples == 50 and len(m.confusion) == 10 and m.auroc is None
    assert 0.0 <= m.accuracy <= 1.0 and m.loss > 0
