"""The rows a node trains on.

Loading and partitioning are deterministic (seeded), so every process computes the same split.
The loaded dataset is cached per process because Flower's simulation reuses actor processes
across rounds: reloading and re-tokenising every round would dominate small rounds.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, Dataset, Subset, TensorDataset

from fedmodel.config import ConfigError, DataConfig, PartitionConfig, ScenarioConfig
from fedmodel.data import DatasetSplits, dataset_labels, load_dataset, partition_indices
from fedmodel.data.errors import SiteDataError
from fedmodel.data.site import SiteSplits
from fedmodel.task import SiteFiles, TaskConfig


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


def site_splits_cached(task: TaskConfig, files: SiteFiles) -> SiteSplits:
    """A site's own rows for a declared task, read once per process while the files are
    unchanged (their size and modification time are part of the key; for an image folder,
    those of its class folders too, which change when an image is added or removed)."""
    stamp = tuple(s for p in (files.path, files.test_path) if p is not None for s in _stamps(p))
    plain = files.model_dump_json(include=set(SiteFiles.model_fields))  # a SimSite or NodeData
    return _cached_site(task.model_dump_json(), plain, stamp)


def _stamps(path: Path) -> list[tuple[str, int, int]]:
    """The path's stamp, then (a folder) each sub-folder's, in name order."""
    if not path.is_dir():
        return [_stamp(path)]
    return [_stamp(path), *(_stamp(p) for p in sorted(path.iterdir()) if p.is_dir())]


def _stamp(path: Path) -> tuple[str, int, int]:
    try:
        st = path.stat()
    except OSError:
        return (str(path), -1, -1)
    return (str(path), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=2)
def _cached_site(task_json: str, files_json: str, _stamp: tuple) -> SiteSplits:
    from fedmodel.data.site import site_splits

    return site_splits(
        TaskConfig.model_validate_json(task_json), SiteFiles.model_validate_json(files_json)
    )


def node_rows(
    scenario: ScenarioConfig, files: SiteFiles | None, partition: tuple[int, int] | None, test: bool
) -> Dataset:
    """This node's training (or held-out) rows: its own files for a declared task, else its
    partition of the packaged dataset."""
    if scenario.task is not None:
        if files is None:
            raise SiteDataError("this site has no [data] path for a declared task", column=None)
        splits = site_splits_cached(scenario.task, files)
        return splits.test if test else splits.train
    if partition is None:
        raise ConfigError(
            "no packaged partition: the coordinator assigned none and node.toml names none"
        )
    if test:
        return client_test_set(scenario, *partition)
    return client_train_set(scenario, *partition)


def model_io(scenario: ScenarioConfig) -> tuple[tuple[int, ...], int]:
    """(input shape, number of classes) the model is built for: from the declaration for a
    task (no rows needed), from the packaged dataset otherwise."""
    if scenario.task is not None:
        return scenario.task.input_shape, scenario.task.num_classes
    splits = dataset_splits(scenario)
    return tuple(splits.input_shape), int(splits.num_classes)


def coordinator_splits(scenario: ScenarioConfig, oracle: bool = False) -> DatasetSplits:
    """What the server holds. A packaged dataset: its splits. A declared task: no rows at all,
    except in a simulation's oracle, which reads every listed site's held-out rows (each with
    its own site's preprocessing) and is recorded as simulation-only."""
    task = scenario.task
    if task is None:
        return dataset_splits(scenario)
    width = task.input_shape
    empty = _empty_rows(task)
    tests: list[Dataset] = [empty]
    if oracle:  # any kind: tables and texts are tensors, image folders stay lazy
        tests += [site_splits_cached(task, site).test for site in scenario.sites]
    return DatasetSplits(
        name=task.name,
        task=task.kind,
        num_classes=task.num_classes,
        train=empty,
        test=ConcatDataset(tests),
        train_groups=None,
        test_groups=None,
        group_names=[s.name for s in scenario.sites],
        input_shape=width,
        class_names=list(task.classes),
    )


def _empty_rows(task: TaskConfig) -> TensorDataset:
    """No rows, in the task's layout: what the coordinator of a declared task holds."""
    labels = torch.zeros(0, dtype=torch.int64)
    if task.kind == "text":
        ids = torch.zeros((0, task.max_length), dtype=torch.int64)
        return TensorDataset(ids, ids.clone(), labels)
    return TensorDataset(torch.zeros((0, *task.input_shape)), labels)
