"""Training tests: two threads, small real datasets loaded once per session."""

from __future__ import annotations

import pytest
import torch

from fedmodel.config import DataConfig

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def mnist_small():
    """2,000 training and 1,000 test MNIST images through ``fedmodel.data``."""
    from fedmodel.data import load_dataset

    return load_dataset(DataConfig(dataset="mnist", train_limit=2000, test_limit=1000))


@pytest.fixture(scope="session")
def digits():
    """sklearn digits (1,437 / 360 rows of 64 features): tiny, for quick MLP runs."""
    from fedmodel.data import load_dataset

    return load_dataset(DataConfig(dataset="digits"))
