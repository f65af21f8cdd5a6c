"""Per-partition sample counts, label histograms and label skew (``fedmodel data stats``).

Kept free of any printing so the numbers can be tested and reused (e.g. in run reports); the CLI
only renders them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedmodel.config import PartitionConfig
from fedmodel.data.partition import label_histograms, label_skew, partition_indices
from fedmodel.data.registry import DatasetSplits, dataset_labels


@dataclass(frozen=True)
class PartitionStats:
    """``histograms[k, c]``: rows of class ``c`` in partition ``k``; ``skew``: mean TV distance."""

    dataset: str
    scheme: str
    class_names: list[str]
    partition_names: list[str]
    histograms: np.ndarray
    skew: float

    @property
    def sizes(self) -> np.ndarray:
        return self.histograms.sum(axis=1)


def partition_stats(splits: DatasetSplits, cfg: PartitionConfig) -> PartitionStats:
    """Partition the training rows of ``splits`` as ``cfg`` says and summarise each partition."""
    labels = dataset_labels(splits.train)
    parts = partition_indices(labels, cfg, splits.train_groups)
    if cfg.scheme == "natural" and splits.train_groups is not None:
        sites = [int(splits.train_groups[p[0]]) for p in parts]
        names = [splits.group_names[s] for s in sites]
    else:
        names = [f"partition-{k}" for k in range(len(parts))]
    return PartitionStats(
        dataset=splits.name,
        scheme=cfg.scheme,
        class_names=splits.class_names,
        partition_names=names,
        histograms=label_histograms(labels, parts, splits.num_classes),
        skew=label_skew(labels, parts, splits.num_classes),
    )
