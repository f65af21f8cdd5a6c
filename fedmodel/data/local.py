"""The rows a node trains on.

Loading and partitioning are deterministic (seeded), so every process computes the same split.
The loaded dataset is cached per process because Flower's simulation reuses actor processes
across rounds: reloading and re-tokenising every round would dominate small rounds.
"""

from __future__ import annotations

from functools import lru_cache

from torch.utils.data import Dataset, Subset

from fedmodel.config import DataConfig, PartitionConfig, ScenarioConfig
from fedmodel.data import DatasetSplits, dataset_labels, load_dataset, partition_indices


@lru_cache(maxsize=2)
def _cached_dataset(data_json: str) -> DatasetSplits:
    return load_dataset(DataConfig.model_validate_json(data_json))


@lru_cache(maxsize=2)
def _cached_partitions(data_json: str, partition_json: str) -> tuple:
    splits = _cached_dataset(data_json)
    cfg = PartitionConfig.model_validate_json(partition_json)
    return tuple(partition_indices(dataset_labels(splits.train), cfg, splits.train_groups))


@lru_cache(maxsize=2)
def _cached_test_partitions(data_json: str, partition_json: str) -> tuple:
    splits = _cached_dataset(data_json)
    cfg = PartitionConfig.model_validate_json(partition_json)
    return tuple(partition_indices(dataset_labels(splits.test), cfg, splits.test_groups))


def dataset_splits(scenario: ScenarioConfig) -> DatasetSplits:
    return _cached_dataset(scenario.data.model_dump_json())


def client_train_set(
    scenario: ScenarioConfig, partition_id: int, num_partitions: int | None = None
) -> Dataset:
    part = scenario.partition_for_clients()
    if num_partitions is not None:
        part = part.model_copy(update={"num_partitions": num_partitions})
    parts = _cached_partitions(scenario.data.model_dump_json(), part.model_dump_json())
    if not 0 <= partition_id < len(parts):
        raise ValueError(f"partition-id {partition_id} outside 0..{len(parts) - 1}")
    return Subset(dataset_splits(scenario).train, parts[partition_id].tolist())


def client_test_set(scenario: ScenarioConfig, partition_id: int, num_partitions: int) -> Dataset:
    """This site's held-out rows: the test split cut the way the training rows are (by site
    for a natural partition), for federated evaluation at the site."""
    part = scenario.partition_for_clients().model_copy(update={"num_partitions": num_partitions})
    parts = _cached_test_partitions(scenario.data.model_dump_json(), part.model_dump_json())
    if not 0 <= partition_id < len(parts):
        raise ValueError(f"partition-id {partition_id} outside 0..{len(parts) - 1}")
    return Subset(dataset_splits(scenario).test, parts[partition_id].tolist())
