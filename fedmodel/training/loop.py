"""``train`` and ``evaluate``: the local training core every fedmodel entry point shares.

``train`` is the one place a model is trained, centrally (``fedmodel train-local``) or as one
federated client round, with or without DP. It is deterministic on CPU for a given
``train_cfg.seed`` (initial sampling, noise and dropout all come from seeded generators inside
a forked RNG, so the caller's global RNG is left untouched), and it reports the privacy spent
as the history entries it added plus the cumulative epsilon over ``prior_history`` + those.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.optim import Optimizer
from torch.utils.data import DataLoader, Dataset

from fedmodel.config import DPConfig, OptimizerConfig, TrainConfig
from fedmodel.device import autocast_for, manual_seed, resolve_device, set_threads
from fedmodel.privacy.accountant import HistoryEntry, epsilon_from_history, normalise_history
from fedmodel.training.dp import ClippingMode, PrivateTraining, make_private
from fedmodel.training.errors import TrainingError
from fedmodel.training.inference import eval_mode
from fedmodel.training.metrics import EvalMetrics, compute_metrics
from fedmodel.training.optim import build_optimizer, build_scheduler
from fedmodel.training.trunk import row_lengths

Proximal = tuple[float, Mapping[str, Tensor]]


@dataclass(frozen=True)
class TrainProgress:
    """Passed to ``progress`` after every logical optimizer step."""

    epoch: int  # 1-based
    epochs: int
    step: int  # logical steps done so far
    total_steps: int
    loss: float  # running mean training loss


@dataclass
class TrainResult:
    """What one ``train`` call produced; ``history`` holds only the entries it added."""

    state_dict: dict[str, Tensor]
    train_loss: float
    train_accuracy: float
    steps: int
    num_examples: int
    noise_multiplier: float | None
    sample_rate: float
    max_grad_norm: float | None
    delta: float | None
    history: list[HistoryEntry] = field(default_factory=list)
    epsilon: float | None = None
    accountant: str | None = None
    clipping: str | None = None
    seconds: float = 0.0

    @property
    def dp(self) -> bool:
        return self.noise_multiplier is not None

    def metrics(self) -> dict:
        """Everything but the weights, JSON-friendly (history entries become lists)."""
        out = asdict(self)
        out.pop("state_dict")
        out["history"] = [list(entry) for entry in self.history]
        return out


class _PlainTraining:
    """The non-DP counterpart of ``PrivateTraining``: same interface, ordinary backward."""

    def __init__(self, model: nn.Module, optimizer: Optimizer, loader: DataLoader) -> None:
        self.module, self.optimizer, self.loader = model, optimizer, loader

    def batches(self):
        return nullcontext(self.loader)

    def backward(self, logits: Tensor, labels: Tensor) -> Tensor:
        losses = F.cross_entropy(logits, labels, reduction="none")
        losses.mean().backward()
        return losses.detach()

    def step(self) -> bool:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return True

    def empty_step(self) -> bool:
        return False

    def close(self) -> None:
        pass


def train(
    model: nn.Module,
    dataset: Dataset,
    *,
    train_cfg: TrainConfig,
    optim_cfg: OptimizerConfig,
    dp_cfg: DPConfig,
    prior_history: Sequence[Sequence[float]] = (),
    planned_total_steps: int | None = None,
    proximal: Proximal | None = None,
    progress: Callable[[TrainProgress], None] | None = None,
    clipping: ClippingMode | None = None,
    seed: int | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``dataset`` (items ``(*inputs, label)``); see module doc.

    ``proximal=(mu, global_state)`` adds FedProx's ``mu/2 ||w - w_global||^2``. Its gradient
    ``mu (w - w_global)`` depends on no training example, so under DP it is added *after*
    clipping and noise (post-processing: no privacy cost, and it is not distorted by clipping).
    ``clipping`` overrides ``dp_cfg.clipping``.

    Randomness (Poisson sampling, DP noise, dropout) comes from generators seeded by
    ``derive_seed(seed, prior steps, purpose)`` (``seed`` defaults to ``train_cfg.seed``):
    reproducible, yet fresh in every round because the prior history grows. Federated callers
    must still pass a distinct ``seed`` per client: two clients sharing a noise stream would let
    the server cancel the noise by subtracting their updates. A seed anyone knows makes the
    noise reproducible by them too; ``dp.secure_mode`` draws it from a CSPRNG instead.
    """
    if len(dataset) == 0:
        raise TrainingError("train: the training set is empty")
    device = resolve_device(train_cfg.device)
    set_threads(train_cfg.threads)
    prior = normalise_history(prior_history)
    base_seed = train_cfg.seed if seed is None else seed
    prior_steps = sum(entry[2] for entry in prior)
    started = time.perf_counter()
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices), _quiet_hook_warnings():
        manual_seed(derive_seed(base_seed, prior_steps, "torch"))
        model.to(device).train()
        optimizer = build_optimizer(model, optim_cfg)
        sampler_gen = torch.Generator().manual_seed(derive_seed(base_seed, prior_steps, "sample"))
        loader = DataLoader(
            dataset, batch_size=train_cfg.batch_size, shuffle=True, generator=sampler_gen
        )
        total_steps = train_cfg.epochs * len(loader)
        scheduler = build_scheduler(optimizer, optim_cfg, total_steps)
        noise_seed = derive_seed(base_seed, prior_steps, "noise")
        session = _open_session(
            model,
            optimizer,
            loader,
            dp_cfg,
            train_cfg.epochs,
            noise_seed,
            planned_total_steps,
            prior,
            clipping,
            row_lengths(dataset) if dp_cfg.max_physical_batch_size else None,
        )
        prox_handle = _attach_proximal(model, optimizer, proximal, device)
        try:
            stats = _run_epochs(session, scheduler, train_cfg.epochs, total_steps, device, progress)
        finally:
            session.close()
            if prox_handle is not None:
                prox_handle.remove()
    return _result(model, session, stats, dataset, loader, dp_cfg, prior, started)


def _open_session(
    model: nn.Module,
    optimizer: Optimizer,
    loader: DataLoader,
    dp_cfg: DPConfig,
    epochs: int,
    noise_seed: int,
    planned_total_steps: int | None,
    prior: list[HistoryEntry],
    clipping: ClippingMode | None,
    lengths: Tensor | None = None,
) -> PrivateTraining | _PlainTraining:
    if not dp_cfg.enabled:
        return _PlainTraining(model, optimizer, loader)
    device = next(model.parameters()).device
    noise_gen = torch.Generator(device=device).manual_seed(noise_seed)
    return make_private(
        model,
        optimizer,
        loader,
        dp_cfg,
        epochs=epochs,
        planned_total_steps=planned_total_steps,
        prior_history=prior,
        noise_generator=noise_gen,
        clipping=clipping,
        row_lengths=lengths,
    )


def derive_seed(base_seed: int, prior_steps: int, purpose: str) -> int:
    """A 63-bit seed for one random stream, stable across runs and platforms (sha256)."""
    digest = hashlib.sha256(f"fedmodel:{base_seed}:{prior_steps}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclass
class _Stats:
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    steps: int = 0

    def add(self, losses: Tensor, logits: Tensor, labels: Tensor) -> None:
        self.loss_sum += float(losses.sum())
        self.correct += int((logits.detach().argmax(dim=1) == labels).sum())
        self.seen += int(labels.shape[0])

    @property
    def loss(self) -> float:
        return self.loss_sum / self.seen if self.seen else float("nan")

    @property
    def accuracy(self) -> float:
        return self.correct / self.seen if self.seen else float("nan")


def _run_epochs(
    session: PrivateTraining | _PlainTraining,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    epochs: int,
    total_steps: int,
    device: torch.device,
    progress: Callable[[TrainProgress], None] | None,
) -> _Stats:
    stats = _Stats()
    for epoch in range(1, epochs + 1):
        with session.batches() as batches:
            for batch in batches:
                *inputs, labels = (t.to(device) for t in batch)
                if labels.shape[0] == 0:
                    stepped = session.empty_step()
                else:
                    with autocast_for(device):  # bf16 on CUDA only; the loss in float32
                        logits = session.module(*inputs).float()
                    losses = session.backward(logits, labels)
                    stats.add(losses, logits, labels)
                    stepped = session.step()
                if stepped:
                    scheduler.step()
                    stats.steps += 1
                    if progress is not None:
                        progress(TrainProgress(epoch, epochs, stats.steps, total_steps, stats.loss))
    return stats


def _attach_proximal(
    model: nn.Module, optimizer: Optimizer, proximal: Proximal | None, device: torch.device
):
    """Pre-step hook adding ``mu (w - w_global)`` to each trainable parameter's gradient."""
    if proximal is None:
        return None
    mu, global_state = proximal
    if mu < 0:
        raise TrainingError(f"proximal mu must be >= 0, got {mu}")
    pairs: list[tuple[nn.Parameter, Tensor]] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name not in global_state:
            raise TrainingError(f"proximal: global weights lack parameter {name!r}")
        ref = global_state[name].detach().to(device=device, dtype=p.dtype)
        if ref.shape != p.shape:
            raise TrainingError(
                f"proximal: {name!r} has shape {tuple(ref.shape)} in the global weights, "
                f"{tuple(p.shape)} in the model"
            )
        pairs.append((p, ref))

    def add_proximal_grad(_optimizer: Optimizer, _args, _kwargs) -> None:
        with torch.no_grad():
            for p, ref in pairs:
                term = (p - ref).mul_(mu)
                p.grad = term if p.grad is None else p.grad.add_(term)

    return optimizer.register_step_pre_hook(add_proximal_grad)


def _result(
    model: nn.Module,
    session: PrivateTraining | _PlainTraining,
    stats: _Stats,
    dataset: Dataset,
    loader: DataLoader,
    dp_cfg: DPConfig,
    prior: list[HistoryEntry],
    started: float,
) -> TrainResult:
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    common = {
        "state_dict": state,
        "train_loss": stats.loss,
        "train_accuracy": stats.accuracy,
        "steps": stats.steps,
        "num_examples": len(dataset),
    }
    if not isinstance(session, PrivateTraining):
        return TrainResult(
            **common,
            noise_multiplier=None,
            sample_rate=1.0 / len(loader),
            max_grad_norm=None,
            delta=None,
            seconds=time.perf_counter() - started,
        )
    history = session.history()
    return TrainResult(
        **common,
        noise_multiplier=session.noise_multiplier,
        sample_rate=session.sample_rate,
        max_grad_norm=session.max_grad_norm,
        delta=session.delta,
        history=history,
        epsilon=epsilon_from_history([*prior, *history], dp_cfg.delta, dp_cfg.accountant),
        accountant=dp_cfg.accountant,
        clipping=session.clipping,
        seconds=time.perf_counter() - started,
    )


@contextmanager
def _quiet_hook_warnings() -> Iterator[None]:
    """Hide torch's harmless notice that a full backward hook fired on outputs only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        yield


def predict_proba(
    model: nn.Module, dataset: Dataset, *, batch_size: int, device: str | torch.device
) -> tuple[np.ndarray, np.ndarray, float]:
    """(labels, probabilities, summed loss) over a labelled dataset, in eval mode."""
    dev = resolve_device(device) if isinstance(device, str) else device
    labels_out, probs_out, loss_sum = [], [], 0.0
    with eval_mode(model, dev):
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            *inputs, labels = (t.to(dev) for t in batch)
            with autocast_for(dev):
                logits = model(*inputs).float()
            loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
            probs_out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
            labels_out.append(labels.cpu().numpy())
    if not labels_out:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32), 0.0
    return np.concatenate(labels_out), np.concatenate(probs_out), loss_sum


def evaluate(
    model: nn.Module, dataset: Dataset, *, batch_size: int = 256, device: str | torch.device = "cpu"
) -> EvalMetrics:
    """Loss, accuracy, macro precision/recall/F1, binary AUROC and confusion on ``dataset``."""
    labels, probs, loss_sum = predict_proba(model, dataset, batch_size=batch_size, device=device)
    num_classes = probs.shape[1] if probs.size else None
    mean_loss = loss_sum / len(labels) if len(labels) else float("nan")
    return compute_metrics(labels, probs, mean_loss, num_classes)
