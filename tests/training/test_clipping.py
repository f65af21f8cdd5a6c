"""Fast (book-keeping) clipping and the Conv2d ghost norm sampler agree with Opacus' per-sample
gradients, computed independently by ``GradSampleModule`` (hooks mode)."""

from __future__ import annotations

import copy

import pytest
import torch
from opacus.grad_sample import GradSampleModule
from torch import nn
from torch.nn import functional as F

from fedmodel.config import ModelConfig
from fedmodel.models import build_model
from fedmodel.training import TrainingError
from fedmodel.training import clipping as clipping_mod
from fedmodel.training.clipping import BookKeepingClipper, conv2d_norm_sample

CLIP = 0.5
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")


def opacus_clipped_sums(
    model: nn.Module, *inputs, labels
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Reference: Opacus per-sample grads, flat clipping as in ``DPOptimizer``."""
    ref = copy.deepcopy(model)
    gsm = GradSampleModule(ref, loss_reduction="sum")
    F.cross_entropy(gsm(*inputs), labels, reduction="sum").backward()
    params = [p for p in ref.parameters() if p.requires_grad]
    norms = torch.stack([p.grad_sample.flatten(1).norm(dim=1) for p in params], 1).norm(dim=1)
    coef = (CLIP / (norms + 1e-6)).clamp(max=1.0)
    sums = [torch.einsum("n,n...->...", coef, p.grad_sample) for p in params]
    gsm.cleanup()
    return sums, norms


def fast_clipped_sums(model: nn.Module, *inputs, labels) -> tuple[list[torch.Tensor], torch.Tensor]:
    clipper = BookKeepingClipper(model, CLIP)
    norms = clipper.backward(F.cross_entropy(model(*inputs), labels, reduction="none"))
    clipper.remove()
    return [p.grad for p in model.parameters() if p.requires_grad], norms


def assert_same(model: nn.Module, *inputs, labels, atol: float = 1e-5) -> None:
    ref, ref_norms = opacus_clipped_sums(model, *inputs, labels=labels)
    got, norms = fast_clipped_sums(model, *inputs, labels=labels)
    torch.testing.assert_close(norms, ref_norms, atol=atol, rtol=1e-4)
    for r, g in zip(ref, got, strict=True):
        torch.testing.assert_close(g, r, atol=atol, rtol=1e-4)


def test_cnn_conv_groupnorm_linear_match_opacus():
    model = build_model(ModelConfig(name="cnn"), (1, 28, 28), 10, seed=0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 1, 28, 28, generator=g)
    assert_same(model, x, labels=torch.arange(8) % 10)


@pytest.mark.parametrize("shape", [(5,), (3, 4, 4)], ids=["flat", "image"])
def test_group_norm_on_flat_and_spatial_inputs_matches_opacus(shape):
    """GroupNorm after a Linear (what ``ModuleValidator.fix`` makes of a BatchNorm1d) sees
    ``[B, C]`` inputs; after a convolution, ``[B, C, H, W]``. Both match Opacus' rule."""
    channels = 8
    first = nn.Linear(5, channels) if len(shape) == 1 else nn.Conv2d(3, channels, 3)
    torch.manual_seed(0)
    model = nn.Sequential(first, nn.GroupNorm(2, channels), nn.Tanh(), nn.Flatten(),
                          nn.LazyLinear(3))  # fmt: skip
    x = torch.randn(6, *shape, generator=torch.Generator().manual_seed(2))
    model(x)  # materialise the lazy layer
    with torch.no_grad():  # away from the initial 1 / 0 so the weight term is exercised
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.5, 0.5)
    assert_same(model, x, labels=torch.arange(6) % 3)


class SeqNet(nn.Module):
    """Sequence Linear layers + LayerNorm, the shapes of a transformer block."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 12)
        self.norm = nn.LayerNorm(12)
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(torch.tanh(self.proj(x))).mean(dim=1))


@pytest.mark.parametrize("per_example_limit", [0, 2**30], ids=["ghost-gram", "materialised"])
def test_sequence_linear_both_norm_paths_match_opacus(monkeypatch, per_example_limit):
    monkeypatch.setattr(clipping_mod, "PER_EXAMPLE_ELEMENTS_LIMIT", per_example_limit)
    torch.manual_seed(0)
    model = SeqNet()
    x = torch.randn(5, 7, 6)
    assert_same(model, x, labels=torch.tensor([0, 1, 2, 0, 1]))


class ConvNet(nn.Module):
    def __init__(self, conv: nn.Conv2d, image: int) -> None:
        super().__init__()
        self.conv = conv
        with torch.no_grad():
            flat = conv(torch.zeros(1, conv.in_channels, image, image)).numel()
        self.head = nn.Linear(flat, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.conv(x)).flatten(1))


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(3, 4, kernel_size=3, stride=1, padding=1),  # channels-last im2col, padded
        nn.Conv2d(2, 5, kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2)),
        nn.Conv2d(1, 4, kernel_size=3, stride=2),  # one input channel: channels-first im2col
        nn.Conv2d(3, 4, kernel_size=3, padding="same", bias=False),
    ],
    ids=["padded", "rectangular-dilated", "one-channel", "same-no-bias"],
)
def test_fast_conv_layouts_match_opacus(conv):
    torch.manual_seed(0)
    model = ConvNet(conv, image=9)
    assert_same(model, torch.randn(6, conv.in_channels, 9, 9), labels=torch.arange(6) % 3)


def test_frozen_layers_and_partial_trainability():
    torch.manual_seed(0)
    model = SeqNet()
    model.proj.requires_grad_(False)
    model.head.bias.requires_grad_(False)
    assert_same(model, torch.randn(4, 7, 6), labels=torch.tensor([0, 1, 2, 0]))
    assert model.proj.weight.grad is None


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(3, 4, kernel_size=3, stride=1, padding=1),
        nn.Conv2d(2, 4, kernel_size=(3, 2), stride=2, padding=0, dilation=1),
        nn.Conv2d(4, 4, kernel_size=3, padding=1, groups=2),  # falls back to Opacus' sampler
    ],
)
def test_conv2d_norm_sampler_matches_per_sample_norms(conv):
    torch.manual_seed(0)
    a = torch.randn(5, conv.in_channels, 9, 9)
    g = torch.randn_like(conv(a))
    from opacus.grad_sample.conv import compute_conv_grad_sample

    expected = compute_conv_grad_sample(conv, [a], g)
    got = conv2d_norm_sample(conv, [a], g)
    for p, gs in expected.items():
        torch.testing.assert_close(got[p], gs.flatten(1).norm(dim=1), atol=1e-4, rtol=1e-4)


def test_clipped_norm_never_exceeds_the_bound():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 5), nn.Tanh(), nn.Linear(5, 2))
    x = torch.randn(3, 5) * 10
    clipper = BookKeepingClipper(model, CLIP)
    norms = clipper.backward(F.cross_entropy(model(x), torch.tensor([0, 1, 0]), reduction="none"))
    total = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
    assert total <= CLIP * len(x) + 1e-5
    assert (norms > CLIP).any()


def test_shared_weights_and_unsupported_layers_are_refused():
    lin = nn.Linear(3, 3)
    tied = nn.Sequential(lin, nn.Tanh(), lin)
    clipper = BookKeepingClipper(tied, CLIP)
    with pytest.raises(TrainingError, match="ran twice"):
        tied(torch.randn(2, 3))
    clipper.remove()

    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return x * self.scale

    with pytest.raises(TrainingError, match="per-sample"):
        BookKeepingClipper(Odd(), CLIP)


@pytest.mark.parametrize(
    ("model_name", "poison"),
    [("cnn", float("inf")), ("cnn", float("nan")), ("mlp", float("nan")), ("mlp", 3e38)],
)  # 3e38 is finite, but its squared norm overflows in the MLP (a CNN's GroupNorm absorbs it)
def test_an_example_that_overflows_is_dropped_not_leaked(model_name, poison):
    """A row crafted to overflow would put NaN into the clipped sum, and NaN survives any noise:
    the update would reveal which rows overflowed. The row must count as zero, exactly as if it
    were absent, and its norm must be reported as zero."""
    shape = (1, 28, 28) if model_name == "cnn" else (12,)
    model = build_model(ModelConfig(name=model_name), shape, 10, seed=0)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, *shape, generator=g)
    labels = torch.arange(6) % 10
    x[3].view(-1)[0] = poison
    got, norms = fast_clipped_sums(copy.deepcopy(model), x, labels=labels)
    keep = torch.tensor([True, True, True, False, True, True])
    ref, ref_norms = fast_clipped_sums(copy.deepcopy(model), x[keep], labels=labels[keep])
    assert float(norms[3]) == 0.0
    torch.testing.assert_close(norms[keep], ref_norms)
    for r, gr in zip(ref, got, strict=True):
        assert torch.isfinite(gr).all()
        torch.testing.assert_close(gr, r, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("secure_mode", [False, True])
def test_fused_noise_and_scaling_are_bitwise_opacus(secure_mode):
    """``BookKeepingDPOptimizer`` adds noise and divides with ``torch._foreach`` calls; with the
    same generator the gradients it hands the optimizer are bitwise Opacus' own."""
    from opacus.optimizers import DPOptimizerFastGradientClipping

    from fedmodel.training.clipping import BookKeepingDPOptimizer

    g = torch.Generator().manual_seed(3)
    batches = [[torch.randn(3, 4, generator=g), torch.randn(5, generator=g)] for _ in range(2)]

    def noised(cls) -> list[torch.Tensor]:
        params = [nn.Parameter(torch.zeros(3, 4)), nn.Parameter(torch.zeros(5))]
        opt = cls(torch.optim.SGD(params, lr=0.1), noise_multiplier=1.3, max_grad_norm=0.7,
                  expected_batch_size=8, loss_reduction="mean", secure_mode=secure_mode,
                  generator=torch.Generator().manual_seed(5))  # fmt: skip
        for grads in batches:  # two physical batches, one logical step
            for p, grad in zip(params, grads, strict=True):
                p.grad = grad.clone()
            opt.accumulate()
        for p, grad in zip(params, batches[-1], strict=True):
            p.grad = grad.clone()  # pre_step accumulates the last batch itself
        assert opt.pre_step()
        return [p.grad for p in params]

    ours, theirs = noised(BookKeepingDPOptimizer), noised(DPOptimizerFastGradientClipping)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
