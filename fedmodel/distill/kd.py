"""Knowledge distillation (Hinton, Vinyals & Dean 2015): a student fits a teacher's soft labels.

The loss is ``T^2 * KL(softmax(teacher / T) || softmax(student / T))``: a temperature ``T`` above
1 spreads the teacher's probability over the classes it finds similar ("a 7 looks a bit like a
1"), which carries more information per row than the hard label, and ``T^2`` keeps the gradient
scale independent of ``T``. Only the teacher's outputs are used, never a label: the public rows
may be unlabelled, and the student learns what the DP global model knows, not the public set.
Training is plain (non-private) Adam: the rows are the server's own and the teacher's outputs
are post-processing of a DP model, so there is nothing left to protect with noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from fedmodel.config import StrictModel
from fedmodel.training.inference import eval_mode


class DistillConfig(StrictModel):
    """How the student is trained and how the public rows are split."""

    temperature: float = Field(4.0, gt=0, description="softens both models' outputs")
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(3e-3, gt=0, description="Adam, cosine decay to zero")
    eval_fraction: float = Field(
        0.5, gt=0, lt=1, description="share of the public rows kept for evaluation only"
    )
    limit: int | None = Field(None, gt=0, description="seeded slice of each part (quick runs)")
    seed: int = 0


def teacher_logits(teacher: nn.Module, inputs: Sequence[Tensor], batch_size: int) -> Tensor:
    """The teacher's logits for every row, in eval mode, on CPU (computed once)."""
    out: list[Tensor] = []
    n = int(inputs[0].shape[0])
    with eval_mode(teacher, "cpu"):
        for start in range(0, n, batch_size):
            out.append(teacher(*(t[start : start + batch_size] for t in inputs)).float())
    return torch.cat(out)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T^2 * KL(teacher || student)`` at temperature ``T``, averaged over the batch."""
    return F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        log_target=True,
        reduction="batchmean",
    ) * (temperature**2)


def distill_student(
    teacher: nn.Module, student: nn.Module, inputs: Sequence[Tensor], cfg: DistillConfig
) -> list[float]:
    """Train ``student`` (in place, CPU) on the teacher's soft labels for ``inputs``; returns
    the mean loss of each epoch."""
    targets = teacher_logits(teacher, inputs, max(cfg.batch_size, 256))
    params = [p for p in student.parameters() if p.requires_grad]
    n = int(inputs[0].shape[0])
    steps = cfg.epochs * -(-n // cfg.batch_size)
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    generator = torch.Generator().manual_seed(cfg.seed)
    losses: list[float] = []
    student.cpu().train()
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for start in range(0, n, cfg.batch_size):
            rows = order[start : start + cfg.batch_size]
            loss = kd_loss(student(*(t[rows] for t in inputs)), targets[rows], cfg.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(rows)
        losses.append(total / n)
    student.eval()
    return losses
