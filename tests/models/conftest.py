"""Model tests run on few threads (the CI machine is small and shared) and share a DP step."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.set_num_threads(2)


def _dp_step(model: nn.Module, *tensors: torch.Tensor) -> None:
    """make_private + forward + backward + optimizer.step(); trainable weights must move."""
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loader = DataLoader(TensorDataset(*tensors), batch_size=len(tensors[-1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = PrivacyEngine(accountant="rdp")
        gsm, dp_opt, _ = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            poisson_sampling=False,
        )
        *inputs, labels = tensors
        nn.functional.cross_entropy(gsm(*inputs), labels).backward()
        dp_opt.step()
    gsm.cleanup()
    after = dict(model.named_parameters())
    assert all(not torch.equal(before[n], after[n].detach()) for n in before)


@pytest.fixture
def dp_step() -> Callable[..., None]:
    return _dp_step
