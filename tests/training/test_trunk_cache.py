"""The frozen trunk computed once: cached per model and data, invalidated when either changes,
and training on its outputs is training on the rows."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Subset, TensorDataset

from fedmodel.cache import TensorCache
from fedmodel.config import DPConfig, ModelConfig, OptimizerConfig, TrainConfig
from fedmodel.models import build_model
from fedmodel.training import train
from fedmodel.training.trunk import load_global_state, rows_through_trunk, trunk_rows

SEQ = 16
CPU = torch.device("cpu")


def minilm(trainable: str = "head", layers: int = 2):
    cfg = ModelConfig(name="minilm", bert_layers=layers, bert_trainable=trainable)
    return build_model(cfg, (SEQ,), 2, seed=0)


def rows(n: int = 24, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 5000, (n, SEQ), generator=g)
    lengths = torch.randint(3, SEQ + 1, (n,), generator=g)
    mask = (torch.arange(SEQ)[None, :] < lengths[:, None]).long()
    labels = torch.randint(0, 2, (n,), generator=g)
    return TensorDataset(ids * mask, mask, labels)


@pytest.mark.parametrize("trainable", ["head", "top-k"])
def test_cached_outputs_equal_the_model_on_the_rows(tmp_path, trainable):
    model = minilm(trainable).eval()
    data = rows()
    first = trunk_rows(model, data, tmp_path, device=CPU)
    again = trunk_rows(model, data, tmp_path, device=CPU)
    assert not first.hit and again.hit and first.key == again.key
    states, mask, labels = again.dataset.tensors
    torch.testing.assert_close(states, first.dataset.tensors[0])
    assert torch.equal(labels, data.tensors[2])
    with torch.no_grad():
        torch.testing.assert_close(model(states, mask), model(*data.tensors[:2]))


def test_cache_is_invalidated_when_the_data_changes(tmp_path):
    model = minilm()
    data = rows()
    first = trunk_rows(model, data, tmp_path, device=CPU)
    ids, mask, labels = (t.clone() for t in data.tensors)
    ids[3, 1] += 1  # one token of one row
    changed = trunk_rows(model, TensorDataset(ids, mask, labels), tmp_path, device=CPU)
    assert not changed.hit and changed.key != first.key
    fewer = trunk_rows(model, Subset(data, range(20)), tmp_path, device=CPU)
    assert not fewer.hit and len(fewer.dataset) == 20
    relabelled = TensorDataset(*data.tensors[:2], 1 - data.tensors[2])
    assert trunk_rows(model, relabelled, tmp_path, device=CPU).hit  # labels are not cached


def test_cache_is_invalidated_when_the_model_changes(tmp_path):
    data = rows()
    first = trunk_rows(minilm(), data, tmp_path, device=CPU)
    changed = minilm()
    with torch.no_grad():
        changed.layers[0].output.dense.bias.add_(1e-3)  # a frozen trunk weight
    assert not trunk_rows(changed, data, tmp_path, device=CPU).hit
    assert not trunk_rows(minilm(layers=1), data, tmp_path, device=CPU).hit  # another cut
    top = trunk_rows(minilm("top-k"), data, tmp_path, device=CPU)
    assert not top.hit and top.key != first.key
    head = minilm()
    with torch.no_grad():
        head.head.weight.add_(1.0)  # the trainable part is not the trunk's business
    assert trunk_rows(head, data, tmp_path, device=CPU).hit


def test_a_damaged_entry_is_recomputed(tmp_path):
    model, data = minilm(), rows()
    first = trunk_rows(model, data, tmp_path, device=CPU)
    path = TensorCache(tmp_path).path(first.key)
    path.write_bytes(path.read_bytes()[:100])
    again = trunk_rows(model, data, tmp_path, device=CPU)
    assert not again.hit
    torch.testing.assert_close(again.dataset.tensors[0], first.dataset.tensors[0])


def test_a_site_keeps_its_own_trunk_weights():
    model, server = minilm("top-k"), minilm("top-k")
    with torch.no_grad():
        for p in server.parameters():
            p.mul_(1.0 + 1e-6)  # FedAvg's float rounding, or an altered trunk
    own = {k: v.clone() for k, v in model.trunk_state().items()}
    load_global_state(model, server.state_dict())
    for name, value in model.trunk_state().items():
        assert torch.equal(value, own[name])
    assert torch.equal(model.head.weight, server.head.weight)
    assert torch.equal(model.layers[1].output.dense.weight, server.layers[1].output.dense.weight)


def test_dp_training_on_trunk_outputs_is_training_on_the_rows(tmp_path):
    """Same seed, same Poisson batches, same noise: only float rounding may differ."""
    data = rows(64)
    cfgs = {
        "train_cfg": TrainConfig(epochs=2, batch_size=16, seed=3),
        "optim_cfg": OptimizerConfig(name="sgd", lr=0.5, momentum=0.0),
        "dp_cfg": DPConfig(noise_multiplier=1.0, max_grad_norm=0.1),
    }
    direct, cached = minilm("top-k"), minilm("top-k")
    plain = train(direct, data, **cfgs)
    fast = train(cached, rows_through_trunk(cached, data, tmp_path, cfgs["train_cfg"]), **cfgs)
    assert plain.history == fast.history
    for name, value in plain.state_dict.items():
        torch.testing.assert_close(fast.state_dict[name], value, atol=1e-5, rtol=1e-4)
    assert list((tmp_path / "trunk").glob("*.pt"))  # the site's cache holds the entry
    off = TrainConfig(trunk_cache=False)
    assert rows_through_trunk(cached, data, tmp_path, off) is data
