"""Dirac canaries: one training run of the site's DP-SGD gives a lower bound on its epsilon.

Steinke, Nasr & Jagielski (2023, arXiv 2305.08846) audit DP-SGD in one run with *Dirac
canaries*: each canary's gradient points along its own coordinates, so a canary that was trained
on moves those coordinates and one that was not leaves only noise there. They insert the canary
gradients into the optimizer directly. Here each canary is a real training row instead, so it
goes through everything a site's record goes through - the Poisson loader, the configured
per-sample clipping (``fast``, ``per-sample`` or ``ghost``), Opacus' noise and the accountant -
and nothing in ``fedmodel.training`` is patched.

How a row can have a Dirac gradient: the site's model is wrapped in :class:`CanaryModel`, which
adds one zero-initialised table with a column of logits per canary. A row's ``slot`` input says
what it is:

* ``REAL_ROW``: one of the site's records. Logits are the site model's; the table is not used,
  so its per-sample gradient (and its clipping) is exactly the unwrapped model's.
* canary ``i``: logits are ``scale * table[:, i]`` and the site model's output is masked off, so
  the per-sample gradient is column ``i`` alone, ``CANARY_GAIN`` times the clipping norm before
  clipping: a worst-case record whose clipped contribution has norm exactly C.
* ``EMPTY_SLOT``: an excluded canary. Its row stays (zero gradient everywhere), so the dataset
  size - and with it the batch size, the sampling rate and Opacus' mean normalisation - is the
  same whichever canaries were drawn; only canary ``i``'s own gradient depends on its coin.

The score of canary ``i`` is how far column ``i`` moved along its initial descent direction:
momentum, learning rate and mean normalisation scale every column alike, so the ranking is what
the noise and the sampling leave of the inclusions. The table receives no gradient from the
site's records, so the scores (and the bound) reveal nothing about them; the records are there
so that the batches, the normalisation and the model being trained are the site's own.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset, TensorDataset, default_collate

from fedmodel.config import DPConfig, OptimizerConfig, TrainConfig
from fedmodel.privacy.accountant import epsilon_from_history, sampling_plan
from fedmodel.privacy.audit.bound import (
    DEFAULT_CONFIDENCE,
    count_guesses,
    epsilon_lower_bound,
)
from fedmodel.privacy.audit.errors import PrivacyAuditError
from fedmodel.training import train

REAL_ROW, EMPTY_SLOT = -1, -2
CANARY_GAIN = 4.0  # a canary's gradient norm before clipping, in units of the clipping norm C
# "Noise off": the DP-SGD path with sigma = 1e-9, i.e. noise of standard deviation 1e-9 * C,
# below float32 resolution of the clipped sums. Clipping, sampling and normalisation stay as
# configured, so it is what a release that forgot to add its noise would be.
NOISE_OFF = 1e-9
CANARY_PARAM = "canary.weight"


@dataclass(frozen=True)
class Mechanism:
    """The DP-SGD a site ran: one noise level and sampling rate for ``steps`` steps in all."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float
    delta: float
    accountant: str
    clipping: str

    def batches_per_epoch(self) -> int:
        """Opacus' ``1 / sample_rate`` (``len(loader)``), which must be a whole number."""
        batches = round(1.0 / self.sample_rate)
        if batches < 1 or not math.isclose(1.0 / batches, self.sample_rate, rel_tol=1e-9):
            raise PrivacyAuditError(
                f"sample rate {self.sample_rate} is not 1 / (batches per epoch): "
                "not a rate fedmodel's Poisson loader produces"
            )
        if self.steps % batches:
            raise PrivacyAuditError(f"{self.steps} steps are not whole epochs of {batches} batches")
        return batches

    def epsilon(self) -> float:
        """What the accountant claims for this mechanism at ``delta``."""
        history = [(self.noise_multiplier, self.sample_rate, self.steps)]
        return epsilon_from_history(history, self.delta, self.accountant)  # type: ignore[arg-type]


@dataclass(frozen=True)
class CanaryAudit:
    """One canary audit: its inputs, the guesses, and the epsilon they refute."""

    canaries: int
    included: int
    k_plus: int
    k_minus: int
    guesses: int
    correct: int
    confidence: float
    delta: float
    epsilon_lower_bound: float
    epsilon_ceiling: float  # the bound had every guess been right: the most this audit can show
    epsilon_accounted: float  # the accountant's epsilon for the site's mechanism (the claim)
    noise_off: bool
    noise_multiplier: float  # the site's configured noise (the claim's)
    noise_multiplier_trained: float  # what the audit's training used (NOISE_OFF when off)
    sample_rate: float
    steps: int
    max_grad_norm: float
    clipping: str
    accountant: str
    batch_size: int
    rows: int  # training rows: the site's records plus one slot per canary
    seed: int
    seconds: float

    @property
    def refutes_claim(self) -> bool:
        """The lower bound exceeds the accounted epsilon: the accounting does not hold."""
        return self.epsilon_lower_bound > self.epsilon_accounted

    def as_dict(self) -> dict:
        return {**asdict(self), "refutes_claim": self.refutes_claim}


class CanaryModel(nn.Module):
    """The site's model plus a canary table; ``forward(*inputs, slot)`` (see module doc)."""

    def __init__(self, model: nn.Module, canaries: int, num_classes: int, scale: float) -> None:
        super().__init__()
        self.model = model
        self.canaries = canaries
        self.scale = float(scale)
        self.canary = nn.Linear(canaries, num_classes, bias=False)
        nn.init.zeros_(self.canary.weight)

    def forward(self, *args: Tensor) -> Tensor:
        *inputs, slot = args
        real = (slot == REAL_ROW).unsqueeze(1)
        is_canary = (slot >= 0).unsqueeze(1)
        onehot = nn.functional.one_hot(slot.clamp(min=0), self.canaries)
        onehot = onehot.to(self.canary.weight.dtype) * is_canary
        site = self.model(*inputs)
        return site * real.to(site.dtype) + self.scale * self.canary(onehot)


def run_canary_audit(
    model: nn.Module,
    site_rows: Dataset,
    mechanism: Mechanism,
    *,
    num_classes: int,
    train_cfg: TrainConfig,
    optim_cfg: OptimizerConfig,
    dp_cfg: DPConfig,
    canaries: int,
    k_plus: int,
    k_minus: int,
    seed: int = 0,
    noise_off: bool = False,
    confidence: float = DEFAULT_CONFIDENCE,
) -> CanaryAudit:
    """Train ``model`` (fresh, untrained) on ``site_rows`` plus canaries with ``mechanism``.

    ``train_cfg``/``optim_cfg``/``dp_cfg`` are the run's; the audit overrides only what makes
    the mechanism the site's: epochs and batch size (so that the sampling rate and step count
    match with the canary slots added), noise, clipping norm, delta and clipping mode.
    ``noise_off`` trains with ``NOISE_OFF`` instead of the run's noise: the control that shows
    the audit can refute a false claim.
    """
    started = time.perf_counter()
    check_guess_plan(canaries, k_plus, k_minus)
    rng = np.random.default_rng(seed)
    labels = torch.from_numpy(rng.integers(0, num_classes, size=canaries))
    included = rng.random(canaries) < 0.5
    rows = audit_rows(site_rows, labels, included)
    batch_size, epochs = _batch_plan(len(rows), mechanism)
    noise = NOISE_OFF if noise_off else mechanism.noise_multiplier
    wrapped = CanaryModel(model, canaries, num_classes, _scale(mechanism, num_classes))
    with warnings.catch_warnings():  # RDP's "optimal order is the smallest alpha" at NOISE_OFF
        warnings.filterwarnings("ignore", message="Optimal order is the smallest alpha")
        result = train(
            wrapped,
            rows,
            train_cfg=train_cfg.model_copy(update={"epochs": epochs, "batch_size": batch_size}),
            optim_cfg=optim_cfg,
            dp_cfg=_dp_config(dp_cfg, mechanism, noise),
            clipping=mechanism.clipping,  # type: ignore[arg-type]
            seed=seed,
        )
    _check_mechanism(result.sample_rate, result.steps, mechanism)
    scores = canary_scores(result.state_dict[CANARY_PARAM], labels)
    count = count_guesses(scores, included, k_plus, k_minus)
    bound = epsilon_lower_bound(canaries, count.guesses, count.correct, mechanism.delta, confidence)
    ceiling = epsilon_lower_bound(
        canaries, count.guesses, count.guesses, mechanism.delta, confidence
    )
    return CanaryAudit(
        canaries=canaries,
        included=int(included.sum()),
        k_plus=k_plus,
        k_minus=k_minus,
        guesses=count.guesses,
        correct=count.correct,
        confidence=confidence,
        delta=mechanism.delta,
        epsilon_lower_bound=bound,
        epsilon_ceiling=ceiling,
        epsilon_accounted=mechanism.epsilon(),
        noise_off=noise_off,
        noise_multiplier=mechanism.noise_multiplier,
        noise_multiplier_trained=noise,
        sample_rate=mechanism.sample_rate,
        steps=mechanism.steps,
        max_grad_norm=mechanism.max_grad_norm,
        clipping=mechanism.clipping,
        accountant=mechanism.accountant,
        batch_size=batch_size,
        rows=len(rows),
        seed=seed,
        seconds=time.perf_counter() - started,
    )


def check_guess_plan(canaries: int, k_plus: int, k_minus: int) -> None:
    """At least two canaries and between 1 and ``canaries`` guesses, checked before training."""
    if canaries < 2:
        raise PrivacyAuditError(f"--canaries must be at least 2, got {canaries}")
    if k_plus < 0 or k_minus < 0 or not 0 < k_plus + k_minus <= canaries:
        raise PrivacyAuditError(
            f"k+ ({k_plus}) + k- ({k_minus}) must be between 1 and the number of canaries "
            f"({canaries})"
        )


def canary_scores(table: Tensor, labels: Tensor) -> np.ndarray:
    """Column ``i``'s movement along ``e_y - 1/K``, the descent direction of a zero column.

    The table starts at zero, so its final value is the movement itself.
    """
    num_classes = table.shape[0]
    direction = nn.functional.one_hot(labels, num_classes).to(table.dtype) - 1.0 / num_classes
    direction = direction / direction.norm(dim=1, keepdim=True)
    return (table.detach().t().cpu() * direction).sum(dim=1).double().numpy()


def audit_rows(site_rows: Dataset, labels: Tensor, included: np.ndarray) -> TensorDataset:
    """The site's rows (slot ``REAL_ROW``) then one slot per canary, as one ``TensorDataset``.

    Canary slots reuse the first record's inputs (valid for every modality; the model's output
    on them is masked off) and carry the canary's label.
    """
    *inputs, targets = materialise(site_rows)
    n, m = targets.shape[0], labels.shape[0]
    if n == 0:
        raise PrivacyAuditError("the site has no training rows to audit")
    slots = torch.where(torch.from_numpy(included), torch.arange(m), torch.full((m,), EMPTY_SLOT))
    columns = [torch.cat([x, x[:1].expand(m, *x.shape[1:])]) for x in inputs]
    slot_column = torch.cat([torch.full((n,), REAL_ROW), slots])
    return TensorDataset(*columns, slot_column, torch.cat([targets, labels.to(targets.dtype)]))


def materialise(dataset: Dataset) -> list[Tensor]:
    """A dataset's columns as tensors: a ``Subset`` of a ``TensorDataset`` by indexing, any
    other dataset by collating its rows (e.g. augmented images, frozen at one draw)."""
    if isinstance(dataset, Subset) and isinstance(dataset.dataset, TensorDataset):
        index = torch.as_tensor(list(dataset.indices), dtype=torch.long)
        return [t[index] for t in dataset.dataset.tensors]
    if isinstance(dataset, TensorDataset):
        return list(dataset.tensors)
    return list(default_collate([dataset[i] for i in range(len(dataset))]))  # type: ignore[arg-type]


def _batch_plan(rows: int, mechanism: Mechanism) -> tuple[int, int]:
    """(batch size, epochs) so that Opacus' sampling rate and step count are the site's."""
    batches = mechanism.batches_per_epoch()
    batch_size = -(-rows // batches)
    sample_rate, _ = sampling_plan(rows, batch_size, 1)
    if not math.isclose(sample_rate, mechanism.sample_rate, rel_tol=1e-9):
        raise PrivacyAuditError(
            f"cannot reproduce sample rate {mechanism.sample_rate} with {rows} rows "
            f"(site records plus canary slots); use fewer canaries"
        )
    return batch_size, mechanism.steps // batches


def _check_mechanism(sample_rate: float, steps: int, mechanism: Mechanism) -> None:
    """The training ran the claimed mechanism, or the comparison means nothing."""
    if not math.isclose(sample_rate, mechanism.sample_rate, rel_tol=1e-9) or steps != (
        mechanism.steps
    ):
        raise PrivacyAuditError(
            f"audit training ran sample rate {sample_rate} for {steps} steps, not the site's "
            f"{mechanism.sample_rate} for {mechanism.steps}"
        )


def _dp_config(dp_cfg: DPConfig, mechanism: Mechanism, noise: float) -> DPConfig:
    return dp_cfg.model_copy(
        update={
            "enabled": True,
            "noise_multiplier": noise,
            "target_epsilon": None,
            "max_grad_norm": mechanism.max_grad_norm,
            "delta": mechanism.delta,
            "accountant": mechanism.accountant,
            "clipping": mechanism.clipping,
        }
    )


def _scale(mechanism: Mechanism, num_classes: int) -> float:
    """Logit scale making a fresh canary's gradient ``CANARY_GAIN * C``: its cross-entropy
    gradient at uniform logits is ``1/K - e_y``, of norm ``sqrt((K - 1) / K)``."""
    return CANARY_GAIN * mechanism.max_grad_norm / math.sqrt((num_classes - 1) / num_classes)


def epochs_of(mechanism: Mechanism) -> int:
    """Local epochs the site ran in all (rounds x epochs per round)."""
    return mechanism.steps // mechanism.batches_per_epoch()
