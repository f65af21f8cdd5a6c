"""DP wrapping: the three clipping modes agree, calibration hits its target, bad combinations
are refused, physical batching and empty Poisson batches keep the accounting right."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from fedmodel.config import DPConfig, ModelConfig, OptimizerConfig, TrainConfig
from fedmodel.models import build_model
from fedmodel.privacy.accountant import epsilon_from_history
from fedmodel.training import TrainingError, train
from fedmodel.training import dp as dp_module
from fedmodel.training.dp import make_private

TRAIN = TrainConfig(epochs=1, batch_size=32, device="cpu", seed=3)
SGD = OptimizerConfig(lr=0.1, momentum=0.0)


@pytest.fixture(scope="module")
def images() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 1, 28, 28, generator=g)
    return TensorDataset(x, torch.randint(0, 10, (128,), generator=g))


@pytest.fixture(scope="module")
def rows() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(128, 5, generator=g), torch.randint(0, 2, (128,), generator=g))


def cnn():
    return build_model(ModelConfig(name="cnn"), (1, 28, 28), 10, seed=0)


def run(dataset, dp: DPConfig, clipping=None, **kw):
    """One epoch of 4 DP steps; a CNN for images, a small MLP for rows."""
    shape = tuple(dataset[0][0].shape)
    model = cnn() if len(shape) == 3 else build_model(ModelConfig(name="mlp"), shape, 2, seed=0)
    return train(model, dataset, train_cfg=TRAIN, optim_cfg=SGD, dp_cfg=dp, clipping=clipping, **kw)


def test_per_sample_ghost_and_fast_give_the_same_model(images):
    """Same seed -> same Poisson batches and noise; the clipped sums must agree."""
    dp = DPConfig(noise_multiplier=1.0, max_grad_norm=0.5, accountant="rdp", clipping="per-sample")
    ref = run(images, dp)
    ghost = run(images, dp.model_copy(update={"clipping": "ghost"}))
    fast = run(images, dp, clipping="fast")
    assert ref.clipping == "per-sample" and ghost.clipping == "ghost" and fast.clipping == "fast"
    for other in (ghost, fast):
        assert other.history == ref.history
        for k, v in ref.state_dict.items():
            torch.testing.assert_close(other.state_dict[k], v, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("mode", ["per-sample", "ghost", "fast"])
def test_physical_batches_change_nothing(images, mode):
    """BatchMemoryManager splits each logical batch; the step, noise and accounting stay."""
    opacus_mode = "ghost" if mode == "ghost" else "per-sample"
    dp = DPConfig(noise_multiplier=1.0, max_grad_norm=0.5, accountant="rdp", clipping=opacus_mode)
    fast = "fast" if mode == "fast" else None
    few = TensorDataset(*images[:64])
    whole = run(few, dp, clipping=fast)
    split = run(few, dp.model_copy(update={"max_physical_batch_size": 8}), clipping=fast)
    assert split.steps == whole.steps == 2 and split.history == whole.history
    for k, v in whole.state_dict.items():
        torch.testing.assert_close(split.state_dict[k], v, atol=1e-6, rtol=1e-5)


def test_text_physical_batches_are_sorted_by_length_and_change_nothing():
    """Text rows split into physical batches by length (short rows together): each physical
    batch pads to less, and the step, noise and accounting are those of the whole batch."""
    g = torch.Generator().manual_seed(4)
    lengths = torch.randint(2, 17, (64,), generator=g)
    mask = (torch.arange(16)[None, :] < lengths[:, None]).long()
    ids = torch.randint(1000, 5000, (64, 16), generator=g) * mask
    text = torch.utils.data.Subset(
        TensorDataset(ids, mask, torch.randint(0, 2, (64,), generator=g)),
        torch.randperm(64, generator=g)[:60].tolist(),
    )
    cfg = ModelConfig(name="minilm", bert_layers=1, bert_trainable="top-k", bert_top_k=1)
    dp = DPConfig(noise_multiplier=1.0, max_grad_norm=0.5, accountant="rdp")
    cfg_train = TRAIN.model_copy(update={"batch_size": 20})

    def run_text(dp_cfg: DPConfig) -> tuple[object, list[torch.Tensor]]:
        model = build_model(cfg, (16,), 2, seed=0)
        seen: list[torch.Tensor] = []
        model.register_forward_pre_hook(lambda _m, args: seen.append(args[1].sum(1)))
        result = train(model, text, train_cfg=cfg_train, optim_cfg=SGD, dp_cfg=dp_cfg,
                       clipping="fast")  # fmt: skip
        return result, seen

    whole, _ = run_text(dp)
    split, batches = run_text(dp.model_copy(update={"max_physical_batch_size": 6}))
    assert split.steps == whole.steps == 3 and split.history == whole.history
    assert len(batches) > split.steps and all(bool((b[1:] >= b[:-1]).all()) for b in batches)
    for k, v in whole.state_dict.items():
        torch.testing.assert_close(split.state_dict[k], v, atol=1e-6, rtol=1e-5)


def _split(sampler, lengths=None) -> tuple[list[list[int]], list[bool]]:
    """(physical batches, skip signals) from Opacus' splitting sampler or the sorted one."""
    from opacus.utils.batch_memory_manager import BatchSplittingSampler

    from fedmodel.training.clipping import BookKeepingDPOptimizer
    from fedmodel.training.dp import LengthSortedSplittingSampler

    param = torch.nn.Parameter(torch.zeros(1))
    opt = BookKeepingDPOptimizer(torch.optim.SGD([param], lr=0.1), noise_multiplier=1.0,
                                 max_grad_norm=1.0, expected_batch_size=50)  # fmt: skip
    kw = {"sampler": sampler, "max_batch_size": 16, "optimizer": opt}
    split = BatchSplittingSampler(**kw) if lengths is None else (
        LengthSortedSplittingSampler(**kw, lengths=lengths))  # fmt: skip
    chunks, signals = [], []
    for chunk in split:
        chunks.append(list(chunk))
        signals.append(opt._step_skip_queue.pop())
    return chunks, signals


def test_length_sorted_splitting_keeps_each_logical_batch_and_its_step_signals():
    """Each logical Poisson batch comes out whole, in order of length, in chunks of Opacus'
    sizes, with the optimizer told to skip every chunk but the last (empty batches: a step)."""
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    lengths = torch.randint(1, 65, (200,), generator=torch.Generator().manual_seed(5))

    def poisson():
        seeded = torch.Generator().manual_seed(7)
        return UniformWithReplacementSampler(num_samples=200, sample_rate=0.25, generator=seeded)

    logical = [list(b) for b in poisson()] + [[], [9, 3]]
    chunks, signals = _split([*poisson(), [], [9, 3]], lengths)
    ref_chunks, ref_signals = _split([*poisson(), [], [9, 3]])
    assert signals == ref_signals and [len(c) for c in chunks] == [len(c) for c in ref_chunks]
    groups, current = [], []
    for chunk, skip in zip(chunks, signals, strict=True):
        current += chunk
        if not skip:
            groups.append(current)
            current = []
    assert len(groups) == len(logical) and max(len(b) for b in logical) > 16
    for got, want in zip(groups, logical, strict=True):
        assert sorted(got) == sorted(want)
        assert [int(lengths[i]) for i in got] == sorted(int(lengths[i]) for i in want)


def test_row_lengths_only_for_text_rows():
    from fedmodel.training.trunk import row_lengths

    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]])
    text = TensorDataset(torch.zeros(3, 3, dtype=torch.long), mask, torch.zeros(3))
    assert row_lengths(text).tolist() == [2, 1, 3]
    assert row_lengths(torch.utils.data.Subset(text, [2, 0])).tolist() == [3, 2]
    states = TensorDataset(torch.randn(3, 3, 4), mask, torch.zeros(3))  # cached trunk outputs
    assert row_lengths(states).tolist() == [2, 1, 3]
    assert row_lengths(TensorDataset(torch.randn(3, 5), torch.zeros(3))) is None
    assert row_lengths(TensorDataset(torch.randn(3, 3), mask.float(), torch.zeros(3))) is None


def test_target_epsilon_calibration_lands_within_two_percent(rows):
    """PRV (the default accountant) calibrated for the 16 steps this call really runs."""
    dp = DPConfig(target_epsilon=4.0)
    cfg = TRAIN.model_copy(update={"batch_size": 8})
    model = build_model(ModelConfig(name="mlp"), (5,), 2, seed=0)
    result = train(model, rows, train_cfg=cfg, optim_cfg=SGD, dp_cfg=dp, clipping="fast")
    assert result.steps == 16 and result.history == [(result.noise_multiplier, 1 / 16, 16)]
    assert 0.98 * 4.0 <= result.epsilon <= 4.0
    assert result.epsilon == pytest.approx(
        epsilon_from_history(result.history, dp.delta, "prv"), abs=1e-9
    )


def test_calibration_gets_prior_history_and_planned_steps(rows, monkeypatch):
    """Federated callers plan every round's steps on top of the history already spent."""
    calls = []

    def fake_calibrate(*args):
        calls.append(args)
        return 1.25

    monkeypatch.setattr(dp_module, "calibrate_noise", fake_calibrate)
    prior = [(1.5, 0.25, 12)]
    dp = DPConfig(target_epsilon=8.0, accountant="rdp", delta=1e-6)
    result = run(rows, dp, clipping="fast", prior_history=prior, planned_total_steps=40)
    assert calls == [(8.0, 1e-6, 0.25, 40, "rdp", prior)]
    assert result.noise_multiplier == 1.25 and result.history == [(1.25, 0.25, 4)]
    assert result.epsilon == pytest.approx(
        epsilon_from_history([*prior, (1.25, 0.25, 4)], 1e-6, "rdp"), abs=1e-9
    )
    default = run(rows, dp, clipping="fast")
    assert calls[-1][3] == 4 and default.steps == 4  # default plan: this call's steps


def test_refused_combinations(images, rows):
    with pytest.raises(TrainingError, match="planned_total_steps"):
        run(rows, DPConfig(target_epsilon=3.0), planned_total_steps=2)
    with pytest.raises(TrainingError, match="no privacy"):
        run(rows, DPConfig(noise_multiplier=0.0))
    with pytest.raises(TrainingError, match="secure_mode"):
        run(rows, DPConfig(noise_multiplier=1.0, secure_mode=True))
    empty = TensorDataset(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long))
    with pytest.raises(TrainingError, match="empty"):
        train(cnn(), empty, train_cfg=TRAIN, optim_cfg=SGD, dp_cfg=DPConfig(noise_multiplier=1.0))
    bn = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 4), torch.nn.BatchNorm1d(4))
    with pytest.raises(TrainingError, match="DP-SGD compatible"):
        train(bn, images, train_cfg=TRAIN, optim_cfg=SGD, dp_cfg=DPConfig(noise_multiplier=1.0))


@pytest.mark.parametrize("clipping", ["per-sample", "fast"])
def test_empty_poisson_batch_is_a_noise_only_step(clipping):
    """Batch size 1 on 4 rows: empty batches are frequent; each still costs one step."""
    model = build_model(ModelConfig(name="mlp", hidden_sizes=[4]), (3,), 2, seed=0)
    data = TensorDataset(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))
    loader = DataLoader(data, batch_size=1, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    session = make_private(
        model, opt, loader, DPConfig(noise_multiplier=1.0), epochs=1, clipping=clipping
    )
    before = [p.detach().clone() for p in model.parameters()]
    try:
        assert session.empty_step()
    finally:
        session.close()
    assert session.history() == [(1.0, 0.25, 1)]
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def test_model_can_be_trained_again_after_dp(images):
    model = cnn()
    dp = DPConfig(noise_multiplier=1.0, accountant="rdp")
    for mode in ("per-sample", "ghost", "fast", "per-sample"):
        train(
            model,
            images,
            train_cfg=TRAIN,
            optim_cfg=SGD,
            dp_cfg=dp.model_copy(update={"clipping": "ghost" if mode == "ghost" else "per-sample"}),
            clipping="fast" if mode == "fast" else None,
        )
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())
    assert not model._forward_hooks and not model.features[0]._forward_hooks
