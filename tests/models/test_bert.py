"""MiniLM classifier: trainable-part choices, frozen embeddings, and a real Opacus DP step."""

from __future__ import annotations

import pytest
import torch
from opacus.validators import ModuleValidator

from fedmodel.config import ModelConfig
from fedmodel.models import ModelError, build_model

SEQ = 16


def minilm(trainable: str, layers: int = 2, top_k: int = 1):
    cfg = ModelConfig(name="minilm", bert_layers=layers, bert_trainable=trainable, bert_top_k=top_k)
    return build_model(cfg, (SEQ,), 2, seed=0)


def trainable_prefixes(model) -> set[str]:
    """Trainable parameter names cut to their block (``model.bert.encoder.layer.1`` etc.)."""
    out = set()
    for name, p in model.named_parameters():
        if p.requires_grad:
            parts = name.split(".")
            out.add(".".join(parts[:5]) if "encoder" in parts else ".".join(parts[:3]))
    return out


@pytest.fixture(scope="module")
def top_k_model():
    return minilm("top-k")


def test_top_k_trains_top_layer_pooler_and_head_only(top_k_model):
    assert trainable_prefixes(top_k_model) == {
        "model.bert.encoder.layer.1",
        "model.bert.pooler",
        "model.classifier.weight",
        "model.classifier.bias",
    }
    assert all(m.training for m in top_k_model.modules())  # from_pretrained's eval() undone
    emb = top_k_model.model.bert.embeddings
    assert not any(p.requires_grad for p in emb.parameters())
    ModuleValidator.validate(top_k_model, strict=True)


def test_head_and_all_but_embeddings():
    head = minilm("head")
    assert trainable_prefixes(head) == {
        "model.bert.pooler",
        "model.classifier.weight",
        "model.classifier.bias",
    }
    full = minilm("all-but-embeddings")
    prefixes = trainable_prefixes(full)
    assert {"model.bert.encoder.layer.0", "model.bert.encoder.layer.1"} <= prefixes
    assert not any(p.requires_grad for n, p in full.named_parameters() if ".embeddings." in n)
    assert len(full.model.bert.encoder.layer) == 2


def test_dp_step_with_batch_of_four(top_k_model, dp_step):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 5000, (4, SEQ), generator=g)
    mask = torch.ones_like(ids)
    mask[:, 12:] = 0
    logits = top_k_model(ids, mask)
    assert isinstance(logits, torch.Tensor) and logits.shape == (4, 2)
    dp_step(top_k_model, ids, mask, torch.tensor([0, 1, 1, 0]))


def test_bad_minilm_settings_are_model_errors():
    with pytest.raises(ModelError, match="bert_top_k"):
        minilm("top-k", layers=1, top_k=2)
    with pytest.raises(ModelError, match="token sequences"):
        build_model(ModelConfig(name="minilm"), (1, 28, 28), 2)
