"""One federated run on a Flower Grid: strategy, central evaluation, records, checkpoints.

Flower's ``Strategy.start`` drives the rounds; this module supplies what it needs (initial
weights, the per-round config, the evaluation hook) and turns each round's outcome into the run
folder. The evaluation hook is the end-of-round point: the aggregate exists, so it is
evaluated, checkpointed and recorded together with the per-client rows.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid

from fedmodel.config import ConfigError, ScenarioConfig
from fedmodel.data import DatasetSplits, load_dataset
from fedmodel.models import build_model
from fedmodel.training import evaluate
from fedmodel.training.checkpoint import load_weights, save_weights
from server import wire
from server.recording import RecordingStrategy
from server.records import (
    RunRecorder,
    latest_checkpoint,
    load_run_scenario,
    read_metrics,
    utc_now,
)
from server.strategies import build_strategy

RoundCallback = Callable[[int, int, dict[str, Any]], None]


@dataclass
class ServerSettings:
    """Everything a run needs besides the Grid. ``on_round`` feeds live progress displays."""

    scenario: ScenarioConfig
    run_dir: Path
    resume: bool = False
    engine: str = "simulation"
    sim_nodes_dir: Path | None = None
    transport: dict[str, Any] = field(default_factory=dict)
    round_timeout: float = 3600.0
    on_round: RoundCallback | None = None


def run_federation(grid: Grid, settings: ServerSettings) -> Path:
    scenario = settings.scenario
    splits = load_dataset(scenario.data)
    model = _initial_model(scenario, splits)
    run_id, offset, initial = _starting_point(settings, model)
    recorder = RunRecorder(
        settings.run_dir, scenario, run_id, engine=settings.engine, transport=settings.transport
    )
    recorder.start()
    if offset:
        resumes = [*(recorder.read_run_info() or {}).get("resumed_from", [])]
        resumes.append({"round": offset, "weights_sha256": arrays_sha256(initial), "at": utc_now()})
        recorder.update_info(resumed_from=resumes)
    total = scenario.federation.rounds
    strategy = RecordingStrategy(
        build_strategy(scenario.strategy, scenario.federation.num_clients),
        round_offset=offset,
        max_update_norm=scenario.strategy.max_update_norm,
    )
    train_config = {
        wire.RUN_ID: run_id,
        wire.NUM_ROUNDS: total,
        wire.SCENARIO: scenario.without_budgets().model_dump_json(),
    }
    if settings.sim_nodes_dir is not None:
        train_config[wire.SIM_NODES_DIR] = str(settings.sim_nodes_dir)
    end_of_round = _end_of_round_hook(settings, recorder, strategy, model, splits, offset)
    result = strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=total - offset,
        timeout=settings.round_timeout,
        train_config=ConfigRecord(train_config),
        evaluate_fn=end_of_round,
    )
    final = result.arrays if result.arrays is not None else initial
    model_hash = export_final_model(settings.run_dir, scenario, splits, final)
    recorder.finish(model_hash=model_hash)
    return settings.run_dir


def _initial_model(scenario: ScenarioConfig, splits: DatasetSplits) -> torch.nn.Module:
    torch.manual_seed(scenario.train.seed)
    return build_model(scenario.model, tuple(splits.input_shape), splits.num_classes)


def _starting_point(
    settings: ServerSettings, model: torch.nn.Module
) -> tuple[str, int, ArrayRecord]:
    """(run id, rounds already done, weights to start from): fresh, or the last checkpoint."""
    if not settings.resume:
        return uuid.uuid4().hex[:12], 0, ArrayRecord(model.state_dict())
    found = latest_checkpoint(settings.run_dir)
    if found is None:
        raise ConfigError(f"{settings.run_dir}: --resume needs a checkpoint, none found")
    rnd, path = found
    state, meta = load_weights(path)
    if meta.get("round") != rnd:
        raise ConfigError(f"{path}: checkpoint metadata says round {meta.get('round')}")
    model.load_state_dict(state)
    return str(meta["run_id"]), rnd, ArrayRecord(model.state_dict())


def _end_of_round_hook(
    settings: ServerSettings,
    recorder: RunRecorder,
    strategy: RecordingStrategy,
    model: torch.nn.Module,
    splits: DatasetSplits,
    offset: int,
) -> Callable[[int, ArrayRecord], MetricRecord | None]:
    scenario = settings.scenario

    def end_of_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        rnd = server_round + offset
        if server_round == 0 and offset > 0:
            return None  # the resumed checkpoint was evaluated when it was written
        model.load_state_dict(arrays.to_torch_state_dict())
        metrics = evaluate(
            model,
            splits.test,
            batch_size=scenario.train.eval_batch_size,
            device=scenario.train.device,
        ).as_dict()
        server_metrics = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        rows = strategy.take_rows(rnd)
        if rnd > 0:
            save_weights(
                recorder.checkpoint_path(rnd),
                arrays.to_torch_state_dict(),
                {"round": rnd, "run_id": recorder.run_id, "metrics": server_metrics,
                 "config_hash": (recorder.read_run_info() or {}).get("config_hash")},
            )  # fmt: skip
        recorder.record_round(rnd, metrics, rows)
        if settings.on_round is not None:
            settings.on_round(rnd, scenario.federation.rounds, {"server": metrics, "clients": rows})
        return MetricRecord(server_metrics)

    return end_of_round


def export_final_model(
    run_dir: Path, scenario: ScenarioConfig, splits: DatasetSplits, arrays: ArrayRecord
) -> str:
    """Write ``model/`` for ``fedmodel predict``; returns the weights' sha256 (the model hash)."""
    state = arrays.to_torch_state_dict()
    meta = {
        "model": scenario.model.model_dump(mode="json"),
        "data": scenario.data.model_dump(mode="json"),
        "input_shape": list(splits.input_shape),
        "num_classes": splits.num_classes,
        "class_names": list(splits.class_names),
        "task": splits.task,
        "rounds": len([r for r in read_metrics(run_dir) if r["round"] > 0]),
    }
    path = save_weights(Path(run_dir) / "model" / "model.safetensors", state, meta)
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def arrays_sha256(arrays: ArrayRecord) -> str:
    """Hash of a model's tensors in name order: proves which weights a round started from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(arrays.to_torch_state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def resume_settings(run_dir: Path, **kwargs: Any) -> ServerSettings:
    return ServerSettings(
        scenario=load_run_scenario(run_dir), run_dir=run_dir, resume=True, **kwargs
    )
