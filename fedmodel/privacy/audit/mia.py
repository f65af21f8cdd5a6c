"""Membership inference on a trained model: can its losses tell a site's records from others?

Two attacks, each scoring a record (higher = "it was trained on"):

* ``loss``: the record's loss under the final model, negated (Yeom et al. 2018): training
  lowers the loss of what it saw.
* ``calibrated``: loss under a reference model minus loss under the final model (difficulty
  calibration, Watson et al. 2022). The reference never saw the records being attacked, so a
  record that is hard for every model (an odd digit, a mislabelled row) no longer looks like a
  non-member just because its loss is high.

Each is judged by its ROC AUC and its true-positive rate at a low false-positive rate (1 %):
what matters for privacy is confident identification of a few records, which an average-case
AUC hides (Carlini et al. 2022). Members and non-members are scored in equal numbers and,
with :func:`matched_rows`, with the same label mix: a site of a non-IID federation holds more
of some classes than the held-out rows do, and a class the model handles worse would otherwise
pass for (non-)membership.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve
from torch import Tensor, nn
from torch.nn import functional as F

from fedmodel.privacy.audit.errors import PrivacyAuditError
from fedmodel.training.inference import eval_mode

DEFAULT_FPR = 0.01
ATTACKS = ("loss", "calibrated")


@dataclass(frozen=True)
class AttackResult:
    """One attack's power: ROC AUC and TPR at ``fpr``."""

    attack: str
    auc: float
    tpr_at_fpr: float
    fpr: float


@dataclass(frozen=True)
class MembershipInference:
    """Both attacks on ``members`` records of the site and as many never-seen ``non_members``."""

    members: int
    non_members: int
    attacks: list[AttackResult] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def matched_rows(
    member_labels: np.ndarray, pool_labels: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of members and of pool rows, as many of each class from both (seeded draw).

    Per class the smaller count decides, so the two groups have identical label histograms.
    """
    member_out: list[np.ndarray] = []
    pool_out: list[np.ndarray] = []
    for label in np.union1d(member_labels, pool_labels):
        mine = np.flatnonzero(member_labels == label)
        theirs = np.flatnonzero(pool_labels == label)
        k = min(mine.size, theirs.size)
        member_out.append(rng.choice(mine, k, replace=False))
        pool_out.append(rng.choice(theirs, k, replace=False))
    if not member_out:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(member_out)), np.sort(np.concatenate(pool_out))


def per_example_losses(
    model: nn.Module, columns: list[Tensor], *, batch_size: int, device: torch.device
) -> np.ndarray:
    """Cross-entropy of every row of ``columns`` (``[*inputs, labels]``), in eval mode.

    Computed from the logits, not from rounded probabilities, so a confidently memorised
    record's loss keeps its rank instead of tying at zero.
    """
    *inputs, labels = columns
    out: list[Tensor] = []
    with eval_mode(model, device):
        for start in range(0, labels.shape[0], batch_size):
            batch = [t[start : start + batch_size].to(device) for t in inputs]
            logits = model(*batch).float()
            target = labels[start : start + batch_size].to(device)
            out.append(F.cross_entropy(logits, target, reduction="none").cpu())
    return torch.cat(out).double().numpy() if out else np.zeros(0)


def attack_metrics(
    attack: str, scores: np.ndarray, members: np.ndarray, fpr: float
) -> AttackResult:
    """AUC and the highest TPR among thresholds whose FPR is at most ``fpr``."""
    members = np.asarray(members, dtype=bool)
    if members.all() or not members.any():
        raise PrivacyAuditError("membership inference needs both members and non-members")
    fprs, tprs, _ = roc_curve(members, scores)
    reachable = tprs[fprs <= fpr]
    return AttackResult(
        attack=attack,
        auc=float(roc_auc_score(members, scores)),
        tpr_at_fpr=float(reachable.max()) if reachable.size else 0.0,
        fpr=fpr,
    )


def membership_inference(
    final: nn.Module,
    reference: nn.Module,
    members: list[Tensor],
    non_members: list[Tensor],
    *,
    batch_size: int,
    device: torch.device,
    fpr: float = DEFAULT_FPR,
) -> MembershipInference:
    """Run both attacks; ``members``/``non_members`` are column lists of equal length."""
    n_in, n_out = members[-1].shape[0], non_members[-1].shape[0]
    if n_in != n_out or n_in == 0:
        raise PrivacyAuditError(
            f"membership inference needs equal, non-zero numbers of members ({n_in}) and "
            f"non-members ({n_out})"
        )
    columns = [torch.cat([a, b]) for a, b in zip(members, non_members, strict=True)]
    truth = np.r_[np.ones(n_in, dtype=bool), np.zeros(n_out, dtype=bool)]
    final_loss = per_example_losses(final, columns, batch_size=batch_size, device=device)
    reference_loss = per_example_losses(reference, columns, batch_size=batch_size, device=device)
    return MembershipInference(
        members=n_in,
        non_members=n_out,
        attacks=[
            attack_metrics("loss", -final_loss, truth, fpr),
            attack_metrics("calibrated", reference_loss - final_loss, truth, fpr),
        ],
    )
