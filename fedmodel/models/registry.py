"""Build a model by name from its config; the one entry point the rest of fedmodel uses."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fedmodel.config import ModelConfig
from fedmodel.device import manual_seed
from fedmodel.models.errors import ModelError

MODEL_NAMES = ("cnn", "mlp", "minilm", "scatternet", "custom")
# Students for ``fedmodel distill``: small registered models a teacher's soft labels train.
# Each is an ordinary config of a registered architecture (so export, predict and quantisation
# treat it like any model) and fits one kind of teacher input.
STUDENT_NAMES = ("cnn-small", "mlp-small", "minilm-2l")
_STUDENT_INPUTS = {"cnn-small": "image", "mlp-small": "tabular", "minilm-2l": "text"}

__all__ = ["MODEL_NAMES", "STUDENT_NAMES", "ModelError", "build_model", "student_config"]


def student_config(name: str, teacher_task: str) -> ModelConfig:
    """The registered student ``name`` for a teacher on ``teacher_task`` inputs.

    ``cnn-small``: the CNN with 4 and 8 channels (the default teacher has 16 and 32), about a
    fifth of its weights. ``mlp-small``: one hidden layer of 16. ``minilm-2l``: the packaged
    MiniLM cut to its first two encoder layers (embeddings frozen, both layers and the head
    train); its word embeddings dominate, so it is smaller by the four layers it drops.
    """
    if name not in STUDENT_NAMES:
        raise ModelError(f"--student: unknown student {name!r} (one of {', '.join(STUDENT_NAMES)})")
    wants = _STUDENT_INPUTS[name]
    if teacher_task != wants:
        raise ModelError(
            f"--student {name}: needs a teacher on {wants} inputs, this run's model takes "
            f"{teacher_task} inputs"
        )
    if name == "cnn-small":
        return ModelConfig(name="cnn", cnn_channels=[4, 8])
    if name == "mlp-small":
        return ModelConfig(name="mlp", hidden_sizes=[16])
    return ModelConfig(name="minilm", bert_layers=2, bert_trainable="all-but-embeddings")


def build_model(
    cfg: ModelConfig,
    input_shape: Sequence[int],
    num_classes: int,
    *,
    seed: int | None = None,
    factory_sha256: str | None = None,
) -> nn.Module:
    """A fresh model for ``input_shape`` (one example, no batch dim) and ``num_classes``.

    With ``seed`` the initial weights are reproducible without touching the caller's global RNG
    (the draw happens inside ``torch.random.fork_rng``), so every federated client and the
    server can build the identical starting model.

    ``factory_sha256`` is the digest a ``custom`` model's sources must have before they are
    imported (:mod:`fedmodel.models.custom`). The caller decides whom to trust for it: a node
    passes the digest its own policy lists, never the request's; the server its scenario's.
    """
    if num_classes < 2:
        raise ModelError(f"model: need at least 2 classes, got {num_classes}")
    shape = tuple(int(d) for d in input_shape)
    if not shape or any(d < 1 for d in shape):
        raise ModelError(f"model: invalid input_shape {shape}")
    if seed is None:
        return _build(cfg, shape, num_classes, factory_sha256)
    with torch.random.fork_rng(devices=[]):
        manual_seed(seed)
        return _build(cfg, shape, num_classes, factory_sha256)


def _build(
    cfg: ModelConfig, shape: tuple[int, ...], num_classes: int, factory_sha256: str | None
) -> nn.Module:
    if cfg.name == "custom":
        from fedmodel.models.custom import build_custom

        return build_custom(cfg, shape, num_classes, factory_sha256)
    if cfg.name == "cnn":
        from fedmodel.models.cnn import CNN

        return CNN(shape, num_classes, channels=cfg.cnn_channels, dropout=cfg.dropout)
    if cfg.name == "scatternet":
        from fedmodel.models.scatter import ScatterNet

        return ScatterNet(
            shape,
            num_classes,
            scales=cfg.scatter_scales,
            angles=cfg.scatter_angles,
            groups=cfg.scatter_groups,
            dropout=cfg.dropout,
        )
    if cfg.name == "mlp":
        from fedmodel.models.mlp import MLP

        return MLP(shape, num_classes, hidden_sizes=cfg.hidden_sizes, dropout=cfg.dropout)
    if cfg.name == "minilm":
        from fedmodel.models.bert import MiniLMClassifier

        if len(shape) != 1:
            raise ModelError(f"minilm expects token sequences (length,), got input_shape {shape}")
        return MiniLMClassifier(
            shape[0],
            num_classes,
            num_layers=cfg.bert_layers,
            trainable=cfg.bert_trainable,
            top_k=cfg.bert_top_k,
            lora_rank=cfg.bert_lora_rank,
            lora_alpha=cfg.bert_lora_alpha,
            normalize=cfg.bert_normalize,
            pool_layers=cfg.bert_pool_layers,
            dropout=cfg.dropout,
        )
    raise ModelError(f"model.name: unknown model {cfg.name!r} (one of {', '.join(MODEL_NAMES)})")
