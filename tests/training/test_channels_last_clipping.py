"""Attack: a model whose convolutions see channels-last tensors (a common speed setting, and a
custom model may choose it) must not slip past the clipping bound.

Opacus' ``unfold2d`` reads the height and width strides as if the input were channels-first and
contiguous. On a channels-last input it builds patches from the wrong elements, so per-sample
gradients and norms are wrong, and an example's clipped contribution can exceed the bound while
every check passes. The reference here is ``torch.func`` (per-example autograd), independent of
Opacus and of fedmodel's samplers.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from fedmodel.config import DPConfig
from fedmodel.training.clipping import BookKeepingClipper, conv2d_norm_sample
from fedmodel.training.dp import make_private

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")
CLIP = 0.5


class TwoConv(nn.Module):
    """The second convolution's input is channels-last whenever the model is."""

    def __init__(self, padding: int | str, groups: int = 1) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 4, kernel_size=3, padding=1)
        self.second = nn.Conv2d(4, 4, kernel_size=3, padding=padding, groups=groups)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.second(torch.tanh(self.first(x))))
        return self.head(h.mean(dim=(2, 3)))


def channels_last_case(padding: int | str, groups: int = 1):
    torch.manual_seed(0)
    model = TwoConv(padding, groups).to(memory_format=torch.channels_last)
    x = torch.randn(5, 3, 8, 8).to(memory_format=torch.channels_last)
    return model, x, torch.tensor([0, 1, 2, 0, 1])


def reference_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, xi, yi):
        out = functional_call(model, p, (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    return vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)


def reference_norms(per_sample: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.stack([g.flatten(1).norm(dim=1) for g in per_sample.values()], 1).norm(dim=1)


@pytest.mark.parametrize("padding,groups", [(1, 1), ("same", 1), (1, 2)])
def test_fast_clipping_norms_and_sums_hold_on_channels_last_inputs(padding, groups):
    model, x, y = channels_last_case(padding, groups)
    ref = reference_grads(model, x, y)
    clipper = BookKeepingClipper(model, CLIP)
    norms = clipper.backward(F.cross_entropy(model(x), y, reduction="none"))
    clipper.remove()
    torch.testing.assert_close(norms, reference_norms(ref), atol=1e-5, rtol=1e-4)
    coef = (CLIP / (reference_norms(ref) + 1e-6)).clamp(max=1.0)
    for name, p in model.named_parameters():
        want = torch.einsum("n,n...->...", coef, ref[name])
        torch.testing.assert_close(p.grad, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("padding", [1, "same"])
def test_ghost_conv_norm_sampler_holds_on_channels_last_inputs(padding):
    model, x, y = channels_last_case(padding)
    ref = reference_grads(model, x, y)
    acts: dict[str, torch.Tensor] = {}
    model.second.register_forward_hook(lambda m, i, o: acts.update(a=i[0].detach(), o=o))
    out = model(x)
    (g,) = torch.autograd.grad(F.cross_entropy(out, y, reduction="sum"), [acts["o"]])
    got = conv2d_norm_sample(model.second, [acts["a"]], g)
    torch.testing.assert_close(
        got[model.second.weight], ref["second.weight"].flatten(1).norm(dim=1)
    )


@pytest.mark.parametrize("padding,groups", [(1, 1), ("same", 1), (1, 2)])
def test_opacus_hooks_per_sample_grads_hold_on_channels_last_inputs(padding, groups):
    """``dp.clipping = "per-sample"``: Opacus' hooks, as ``make_private`` sets them up."""
    model, x, y = channels_last_case(padding, groups)
    ref = reference_grads(model, x, y)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(TensorDataset(x, y), batch_size=len(y))
    dp = DPConfig(noise_multiplier=1.0, max_grad_norm=CLIP, poisson_sampling=False)
    session = make_private(model, optimizer, loader, dp, epochs=1, clipping="per-sample")
    session.backward(session.module(x), y)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad_sample, ref[name], atol=1e-5, rtol=1e-4)
    session.close()


def test_the_ghost_mode_step_clips_channels_last_convolutions():
    """``dp.clipping = "ghost"`` end to end: the norms Opacus clips with are the true ones."""
    model, x, y = channels_last_case("same", groups=2)  # grouped: the fallback grad sampler
    ref = reference_norms(reference_grads(model, x, y))
    loader = DataLoader(TensorDataset(x, y), batch_size=len(y))
    dp = DPConfig(noise_multiplier=1.0, max_grad_norm=CLIP, poisson_sampling=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    session = make_private(model, optimizer, loader, dp, epochs=1, clipping="ghost")
    session.backward(session.module(x), y)
    torch.testing.assert_close(session.module.get_norm_sample(), ref, atol=1e-5, rtol=1e-4)
    session.close()
