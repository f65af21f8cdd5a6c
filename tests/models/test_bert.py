"""MiniLM sentence classifier: mean pooling, what trains, Opacus and fast clipping."""

from __future__ import annotations

import pytest
import torch
from opacus.validators import ModuleValidator

from fedmodel.config import ModelConfig
from fedmodel.models import ModelError, build_model
from fedmodel.models.bert import mean_pool
from fedmodel.training.clipping import BookKeepingClipper, check_fast_supported

SEQ = 16


def minilm(trainable: str, layers: int = 2, top_k: int = 1, seq: int = SEQ):
    cfg = ModelConfig(name="minilm", bert_layers=layers, bert_trainable=trainable, bert_top_k=top_k)
    return build_model(cfg, (seq,), 2, seed=0)


def trainable_blocks(model) -> set[str]:
    """Trainable parameter names cut to their block: ``layers.1``, ``head.weight``, ..."""
    return {".".join(n.split(".")[:2]) for n, p in model.named_parameters() if p.requires_grad}


def batch(seq: int = SEQ, pad_from: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 5000, (4, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[1:, pad_from:] = 0
    mask[3, 4:] = 0
    ids[mask == 0] = 0
    return ids, mask


@pytest.fixture(scope="module")
def top_k_model():
    return minilm("top-k")


def test_default_is_six_layers_head_only():
    model = build_model(ModelConfig(name="minilm"), (SEQ,), 2, seed=0)
    assert len(model.layers) == 6 and model.frozen_layers == 6
    assert trainable_blocks(model) == {"head.weight", "head.bias"}


def test_mean_pooling_ignores_padding():
    """The same rows padded to 16 or 40 tokens (and garbage ids under the padding) classify
    identically: padding is masked in attention and dropped by the pooling."""
    model = minilm("top-k").eval()
    ids, mask = batch()
    wide_ids = torch.cat([ids, torch.randint(1000, 5000, (4, 24))], dim=1)
    wide_mask = torch.cat([mask, torch.zeros(4, 24, dtype=mask.dtype)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(ids, mask), model(wide_ids, wide_mask))
    hidden = torch.randn(2, 5, 3)
    m = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    torch.testing.assert_close(mean_pool(hidden, m)[0], hidden[0, :2].mean(0))


@pytest.mark.parametrize(
    ("trainable", "blocks"),
    [
        ("head", {"head.weight", "head.bias"}),
        ("top-k", {"layers.1", "head.weight", "head.bias"}),
        ("lora", {"layers.0", "layers.1", "head.weight", "head.bias"}),
        ("lora-top-k", {"layers.1", "head.weight", "head.bias"}),
        ("bitfit", {"layers.0", "layers.1", "head.weight", "head.bias"}),
        ("all-but-embeddings", {"layers.0", "layers.1", "head.weight", "head.bias"}),
    ],
)
def test_trainable_choices_pass_opacus_and_fast_clipping(trainable, blocks):
    model = minilm(trainable)
    assert trainable_blocks(model) == blocks
    assert not any(p.requires_grad for p in model.embeddings.parameters())
    assert all(m.training for m in model.modules())  # from_pretrained's eval() undone
    ModuleValidator.validate(model, strict=True)
    check_fast_supported(model)
    clipper = BookKeepingClipper(model, max_grad_norm=1.0)  # one fast-clipped backward pass
    ids, mask = batch()
    losses = torch.nn.functional.cross_entropy(
        model(ids, mask), torch.tensor([0, 1, 1, 0]), reduction="none"
    )
    norms = clipper.backward(losses)
    clipper.remove()
    assert norms.shape == (4,) and bool((norms > 0).all())
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_only_the_chosen_parameters_are_trainable_in_lora_and_bitfit():
    lora = minilm("lora")
    names = [n for n, p in lora.named_parameters() if p.requires_grad and n.startswith("layers")]
    assert names and all(".lora_a." in n or ".lora_b." in n for n in names)
    assert {n.split(".")[-3] for n in names} == {"query", "key", "value", "dense"}
    top = minilm("lora-top-k")
    top_names = [n for n, p in top.named_parameters() if p.requires_grad and n.startswith("layers")]
    assert top_names == [n for n in names if n.startswith("layers.1.")] and top.frozen_layers == 1
    bitfit = minilm("bitfit")
    names = [n for n, p in bitfit.named_parameters() if p.requires_grad and n.startswith("layers")]
    assert names and all(n.endswith(".bias") for n in names)


def test_fresh_lora_leaves_the_pretrained_function_unchanged():
    ids, mask = batch()
    plain, lora = minilm("head").eval(), minilm("lora").eval()
    lora.head.load_state_dict(plain.head.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(plain(ids, mask), lora(ids, mask))


@pytest.mark.parametrize("trainable", ["head", "top-k", "lora-top-k"])
def test_trunk_outputs_give_the_same_logits(trainable):
    model = minilm(trainable).eval()
    ids, mask = batch()
    with torch.no_grad():
        states = model.trunk(ids, mask)
        assert states.dim() == (2 if trainable == "head" else 3)
        torch.testing.assert_close(model(states, mask), model(ids, mask))


def test_dp_step_with_batch_of_four(top_k_model, dp_step):
    ids, mask = batch()
    logits = top_k_model(ids, mask)
    assert isinstance(logits, torch.Tensor) and logits.shape == (4, 2)
    dp_step(top_k_model, ids, mask, torch.tensor([0, 1, 1, 0]))


def test_bad_minilm_settings_are_model_errors():
    with pytest.raises(ModelError, match="bert_top_k"):
        minilm("top-k", layers=1, top_k=2)
    with pytest.raises(ModelError, match="bert_top_k"):
        minilm("lora-top-k", layers=1, top_k=2)
    with pytest.raises(ModelError, match="token sequences"):
        build_model(ModelConfig(name="minilm"), (1, 28, 28), 2)
    with pytest.raises(ModelError, match="no frozen encoder layer"):
        minilm("lora").trunk(*batch())


def test_normalised_sentence_vectors_are_scale_free():
    cfg = ModelConfig(name="minilm", bert_layers=2, bert_normalize=True)
    model = build_model(cfg, (SEQ,), 2, seed=0).eval()
    ids, mask = batch()
    with torch.no_grad():
        pooled = model.trunk(ids, mask)
        torch.testing.assert_close(model(pooled, mask), model(ids, mask))
        torch.testing.assert_close(model(3.0 * pooled, mask), model(pooled, mask))


def test_pooling_the_last_layers_is_the_mean_of_their_pooled_states():
    """``bert_pool_layers`` 2 on a 3-layer cut: the mean of layers 2 and 3's mean-pooled
    states, the same from token ids and from the cached trunk, padding ignored."""
    cfg = ModelConfig(name="minilm", bert_layers=3, bert_pool_layers=2)
    model = build_model(cfg, (SEQ,), 2, seed=0).eval()
    ids, mask = batch()
    with torch.no_grad():
        hidden = model._embed(ids)
        additive = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        pooled = []
        for layer in model.layers:
            hidden = layer(hidden, attention_mask=additive)
            pooled.append(mean_pool(hidden, mask))
        want = (pooled[1] + pooled[2]) / 2
        torch.testing.assert_close(model.trunk(ids, mask), want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(model.trunk(ids, mask), mask), model(ids, mask))
        wide = torch.cat([ids, torch.zeros(4, 8, dtype=ids.dtype)], 1)
        wide_mask = torch.cat([mask, torch.zeros(4, 8, dtype=mask.dtype)], 1)
        torch.testing.assert_close(model(wide, wide_mask), model(ids, mask))


def test_pool_layers_change_the_trunk_digest_and_need_the_head_only():
    one = build_model(ModelConfig(name="minilm", bert_layers=2), (SEQ,), 2, seed=0)
    two = build_model(ModelConfig(name="minilm", bert_layers=2, bert_pool_layers=2), (SEQ,), 2,
                      seed=0)  # fmt: skip
    assert one.trunk_digest() != two.trunk_digest()  # a cache of one is stale for the other
    with pytest.raises(ModelError, match="bert_pool_layers: 2 needs"):
        build_model(ModelConfig(name="minilm", bert_layers=2, bert_pool_layers=2,
                                bert_trainable="top-k"), (SEQ,), 2)  # fmt: skip
    with pytest.raises(ModelError, match="bert_pool_layers: 3 outside"):
        build_model(ModelConfig(name="minilm", bert_layers=2, bert_pool_layers=3), (SEQ,), 2)
