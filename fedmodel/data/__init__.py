"""fedmodel's data layer: carrier packages, loaders, preprocessing, splits and partitions.

Public API (the contract in docs/architecture.md)::

    load_dataset(cfg: DataConfig) -> DatasetSplits
    partition_indices(labels, cfg: PartitionConfig, groups=None) -> list[np.ndarray]
    dataset_labels(dataset) -> np.ndarray
    label_skew(labels, parts, num_classes=None) -> float

Every bad input raises ``DataError`` (a ``FedmodelError``) with one line naming what is wrong.
"""

from fedmodel.data.errors import DataError
from fedmodel.data.partition import label_histograms, label_skew, partition_indices
from fedmodel.data.registry import (
    DATASETS,
    DatasetSplits,
    check_dataset,
    dataset_labels,
    load_dataset,
)
from fedmodel.data.tokenize import load_tokenizer, minilm_model_dir, tokenize_texts

__all__ = [
    "DATASETS",
    "DataError",
    "DatasetSplits",
    "check_dataset",
    "dataset_labels",
    "label_histograms",
    "label_skew",
    "load_dataset",
    "load_tokenizer",
    "minilm_model_dir",
    "partition_indices",
    "tokenize_texts",
]
