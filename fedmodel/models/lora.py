"""LoRA adapters as two plain ``nn.Linear`` layers, so Opacus and fast clipping see ordinary layers.

Why not ``peft``: Opacus issue #820 (open) reports PEFT 0.14+ silently corrupting LoRA updates
under Opacus' hooks (training looks normal, the adapters come out unusable); Opacus' own
tutorial pins peft 0.13.2 until that is fixed. ``peft`` is not a dependency of this project and
was not tried here. A LoRA adapter needs nothing PEFT-specific: ``W x + (alpha / r) B A x``
with ``A`` and ``B`` as bias-free ``nn.Linear`` layers is exactly a pair of layers both Opacus'
grad samplers and :class:`fedmodel.training.clipping.BookKeepingClipper` already handle. The
evidence that the clipped per-sample gradients are right is a test, not a claim:
``tests/models/test_lora.py`` compares the clipped gradient sum of fast clipping and of Opacus'
hooks against per-example autograd (one backward pass per example, clipped by hand).

``B`` starts at zero (Hu et al. 2021), so a fresh adapter leaves the pretrained model unchanged;
``A`` starts with seeded Kaiming-uniform weights like any ``nn.Linear``.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor, nn

from fedmodel.models.errors import ModelError


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update ``(alpha / r) B A``."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        if rank < 1:
            raise ModelError(f"model.bert_lora_rank: must be >= 1, got {rank}")
        self.base = base.requires_grad_(False)
        self.lora_a = nn.Linear(base.in_features, rank, bias=False)
        self.lora_b = nn.Linear(rank, base.out_features, bias=False)
        nn.init.zeros_(self.lora_b.weight)
        self.scale = float(alpha) / rank

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.lora_b(self.lora_a(x)) * self.scale


def add_lora(root: nn.Module, targets: Iterable[str], rank: int, alpha: float) -> int:
    """Replace every ``nn.Linear`` under ``root`` whose attribute name is in ``targets`` by a
    :class:`LoRALinear` around it; returns how many were wrapped (0 is a ``ModelError``)."""
    wanted = set(targets)
    swaps = [
        (parent, name, child)
        for parent in root.modules()
        for name, child in parent.named_children()
        if name in wanted and type(child) is nn.Linear
    ]
    if not swaps:
        raise ModelError(f"lora: no nn.Linear named {sorted(wanted)} to adapt")
    for parent, name, child in swaps:
        setattr(parent, name, LoRALinear(child, rank, alpha))
    return len(swaps)
