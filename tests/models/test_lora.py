"""LoRA under DP-SGD: per-sample gradients and their clipped sum match per-example autograd.

This is the check Opacus issue #820 asks for before trusting any LoRA implementation under
Opacus: one backward pass per example gives the true per-example gradients; Opacus' hooks and
fedmodel's fast (book-keeping) clipping must reproduce them, and their clipped sum.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from opacus import GradSampleModule
from torch.nn import functional as F

from fedmodel.config import ModelConfig
from fedmodel.models import build_model
from fedmodel.training.clipping import BookKeepingClipper

SEQ = 12
CLIP = 0.05  # small enough that every example is clipped


@pytest.fixture(scope="module")
def lora_model():
    cfg = ModelConfig(name="minilm", bert_layers=1, bert_trainable="lora", bert_lora_rank=4)
    return with_b_weights(build_model(cfg, (SEQ,), 2, seed=0))


def with_b_weights(model):
    """B = 0 at init makes A's gradient 0: give B seeded weights so A is tested too."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_b.weight"):
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(len(name)))
    return model


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 5000, (5, SEQ), generator=g)
    mask = torch.ones_like(ids)
    mask[2:, 7:] = 0
    mask[4, 3:] = 0
    return ids, mask, torch.tensor([0, 1, 1, 0, 1])


def _params(model):
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def per_example_grads(model, ids, mask, labels) -> dict[str, torch.Tensor]:
    """``name -> [B, *shape]`` from one autograd call per example."""
    named = _params(model)
    rows = []
    for i in range(len(labels)):
        loss = F.cross_entropy(model(ids[i : i + 1], mask[i : i + 1]), labels[i : i + 1])
        rows.append(torch.autograd.grad(loss, [p for _, p in named]))
    return {n: torch.stack([r[j] for r in rows]) for j, (n, _) in enumerate(named)}


def clipped_sum(grads: dict[str, torch.Tensor], clip: float) -> dict[str, torch.Tensor]:
    norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in grads.values()))
    coef = (clip / (norms + 1e-6)).clamp(max=1.0)
    return {n: torch.einsum("b,b...->...", coef, g) for n, g in grads.items()}


def test_lora_adapters_are_the_trainable_layers(lora_model):
    names = [n for n, _ in _params(lora_model)]
    assert sum(".lora_a." in n for n in names) == 6  # q, k, v, attention out, 2 feed-forward
    assert sum(".lora_b." in n for n in names) == 6


def test_opacus_per_sample_gradients_match_autograd(lora_model):
    ids, mask, labels = _batch()
    expected = per_example_grads(lora_model, ids, mask, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gsm = GradSampleModule(lora_model, loss_reduction="sum")
        F.cross_entropy(gsm(ids, mask), labels, reduction="sum").backward()
    try:
        for name, p in _params(lora_model):
            torch.testing.assert_close(p.grad_sample, expected[name], atol=1e-6, rtol=1e-4)
    finally:
        gsm._close()
        for _, p in _params(lora_model):
            p.grad = None
            p.grad_sample = None


def assert_fast_sum_matches(model, inputs: tuple[torch.Tensor, ...], ids, mask, labels) -> None:
    """Fast clipping on ``model(*inputs)`` writes the clipped per-example autograd sum (the
    reference runs the whole model from token ids, one example at a time)."""
    expected = clipped_sum(per_example_grads(model, ids, mask, labels), CLIP)
    assert set(expected) == {n for n, _ in _params(model)}
    clipper = BookKeepingClipper(model, CLIP)
    try:
        losses = F.cross_entropy(model(*inputs), labels, reduction="none")
        norms = clipper.backward(losses)
    finally:
        clipper.remove()
    assert bool((norms > CLIP).all())  # every example really was clipped
    for name, p in _params(model):
        torch.testing.assert_close(p.grad, expected[name], atol=1e-6, rtol=1e-4)
        p.grad = None


def test_fast_clipping_sum_matches_clipped_autograd(lora_model):
    ids, mask, labels = _batch()
    assert_fast_sum_matches(lora_model, (ids, mask), ids, mask, labels)


def test_top_layer_adapters_from_cached_trunk_match_autograd_from_tokens():
    """``lora-top-k`` trains from cached trunk outputs: the clipped sum fast clipping builds
    from them equals the per-example autograd one through the whole model from token ids."""
    cfg = ModelConfig(name="minilm", bert_layers=2, bert_trainable="lora-top-k",
                      bert_top_k=1, bert_lora_rank=4)  # fmt: skip
    model = with_b_weights(build_model(cfg, (SEQ,), 2, seed=0))
    assert model.frozen_layers == 1
    ids, mask, labels = _batch()
    assert_fast_sum_matches(model, (model.trunk(ids, mask), mask), ids, mask, labels)
