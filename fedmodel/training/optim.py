"""Optimisers and learning-rate schedules built from ``OptimizerConfig``.

The schedule is a ``LambdaLR`` over *optimizer steps*, not epochs: under DP a federated round
may run a few dozen steps, and Poisson sampling makes epochs a loose notion, so warm-up and decay
are expressed in the one unit both the accountant and the optimiser count.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn
from torch.optim import SGD, Adam, AdamW, Optimizer
from torch.optim.lr_scheduler import LambdaLR

from fedmodel.config import OptimizerConfig
from fedmodel.training.errors import TrainingError


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters that require grad; frozen ones never reach the optimiser (nor weight decay)."""
    return [p for p in model.parameters() if p.requires_grad]


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> Optimizer:
    """SGD (with momentum), Adam or AdamW over the trainable parameters only."""
    params = trainable_parameters(model)
    if not params:
        raise TrainingError("optimizer: the model has no trainable parameters")
    if cfg.name == "sgd":
        return SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise TrainingError(f"optimizer.name: unknown optimizer {cfg.name!r} (sgd, adam or adamw)")


def lr_factor(cfg: OptimizerConfig, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the base LR at optimizer step ``k`` (0-based): warm-up, then the schedule.

    Warm-up is linear from ``1/warmup_steps`` to 1 so the first step is never taken at LR 0.
    Cosine decays to 0 at ``total_steps``; step decays by ``gamma`` every ``step_size`` steps.
    """
    warmup = cfg.warmup_steps
    decay_steps = max(1, total_steps - warmup)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        after = step - warmup
        if cfg.schedule == "constant":
            return 1.0
        if cfg.schedule == "cosine":
            progress = min(1.0, after / decay_steps)
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if cfg.schedule == "step":
            return cfg.gamma ** (after // cfg.step_size)
        raise TrainingError(f"optimizer.schedule: unknown schedule {cfg.schedule!r}")

    return factor


def build_scheduler(optimizer: Optimizer, cfg: OptimizerConfig, total_steps: int) -> LambdaLR:
    """``LambdaLR`` to step once per real (not skipped) optimizer step."""
    return LambdaLR(optimizer, lr_factor(cfg, total_steps))
