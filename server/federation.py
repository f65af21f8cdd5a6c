"""One federated run on a Flower Grid: strategy, central evaluation, records, checkpoints.

Flower's ``Strategy.start`` drives the rounds; this module supplies what it needs (initial
weights, the per-round config, the evaluation hook) and turns each round's outcome into the run
folder. The evaluation hook is the end-of-round point: the aggregate exists, so it is
evaluated, checkpointed and recorded together with the per-client rows.

The parts every transport shares (:func:`start_run`, :func:`round_config`,
:func:`end_of_round_hook`, :func:`finish_run`) are public, so the SecAgg+ app
(``server/secagg_app.py``) records a run exactly as this one does.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid, RdpAccountant
from flwr.serverapp.strategy import Strategy
from torch.utils.data import Dataset

from fedmodel import __version__
from fedmodel.config import ConfigError, ScenarioConfig, config_hash
from fedmodel.crypto.keys import fingerprint
from fedmodel.data import DatasetSplits
from fedmodel.data.local import coordinator_splits
from fedmodel.models import build_model
from fedmodel.partitions import dump_assignment, read_assignment
from fedmodel.sim_nodes import pin_server
from fedmodel.training import evaluate
from fedmodel.training.checkpoint import load_weights, save_weights
from fedmodel.training.trunk import load_global_state, rows_through_trunk
from server import central_dp, wire
from server.audit import AuditLog
from server.deploy.grid import PromptGrid
from server.ledger_copies import LedgerCopies, publish_key, publish_keys
from server.recording import RecordingStrategy, RoundFailed, SiteRoster
from server.records import (
    RunRecorder,
    latest_checkpoint,
    load_run_scenario,
    read_metrics,
    utc_now,
    write_progress,
)
from server.sealing import (
    KEYS_DIR,
    ServerKeys,
    SignedTraffic,
    SimNodeKeys,
    ensure_server_keys,
    load_server_keys,
    signers_from_directory,
    signers_from_sim_nodes,
)
from server.strategies import build_strategy

RoundCallback = Callable[[int, int, dict[str, Any]], None]
EvaluationSource = Callable[[int], dict[str, Any]]
SITE_ROWS = "site rows"
DEPLOYMENT = "deployment"  # ServerSettings.engine of a run on real SuperNodes
REQUEST_SLACK_S = 600.0  # a request expires this long after its round could have timed out
REPLAY_GUARD_FILE = "replay-guard.json"  # sealed runs: message ids accepted so far
RowSource = Callable[[int], list[dict[str, Any]]]
log = logging.getLogger(__name__)


@dataclass
class ServerSettings:
    """Everything a run needs besides the Grid. ``on_round`` feeds live progress displays.

    ``server_keys_dir``: deployment's ServerApp keys (``server.x25519``, ``server.ed25519``);
    ``None`` makes fresh ones in ``RUN_DIR/server-keys``. ``registered_keys_dir``: deployment's
    ``<node>.ed25519.pub`` files; ``None`` registers the simulation's virtual nodes.
    ``cache_dir``: where the server keeps its own test rows' frozen-trunk outputs across runs
    (``None``: computed once per run, in memory).
    """

    scenario: ScenarioConfig
    run_dir: Path
    resume: bool = False
    engine: str = "simulation"
    sim_nodes_dir: Path | None = None
    transport: dict[str, Any] = field(default_factory=dict)
    round_timeout: float = 3600.0
    on_round: RoundCallback | None = None
    server_keys_dir: Path | None = None
    registered_keys_dir: Path | None = None
    cache_dir: Path | None = None  # the coordinator's cache of its test rows' trunk outputs


@dataclass
class RunState:
    """A started run: what every round needs, whichever app drives the rounds."""

    settings: ServerSettings
    splits: DatasetSplits
    model: torch.nn.Module
    run_id: str
    offset: int
    initial: ArrayRecord
    recorder: RunRecorder
    keys: ServerKeys
    signers: Mapping[str, Ed25519PublicKey]
    audit: AuditLog
    evaluation: str = "public"  # server evaluation: "public", "oracle" or "none"


def run_federation(grid: Grid, settings: ServerSettings) -> Path:
    scenario = settings.scenario
    accountant = central_accountant(settings)
    state = start_run(settings)
    traffic = SignedTraffic.for_run(
        state.keys,
        state.signers,
        state.run_id,
        settings.run_dir / REPLAY_GUARD_FILE,
        sealed=scenario.security.sealed_updates,
    )
    traffic.request_ttl = settings.round_timeout + REQUEST_SLACK_S
    traffic.copies = LedgerCopies(settings.run_dir, state.signers)
    sim_dir = str(settings.sim_nodes_dir) if settings.sim_nodes_dir is not None else None
    roster = SiteRoster(
        expected=sorted(state.signers),
        min_nodes=scenario.strategy.min_nodes(scenario.federation.num_clients),
        connect_timeout=settings.round_timeout,
        on_progress=lambda progress: write_progress(settings.run_dir, progress),
    )
    if isinstance(grid, PromptGrid):
        grid.on_wait = roster.waiting_for
    strategy = RecordingStrategy(
        _strategy(scenario, accountant),
        traffic=traffic,
        round_offset=state.offset,
        max_update_norm=scenario.strategy.max_update_norm,
        sim_nodes_dir=sim_dir,
        last_round=scenario.federation.rounds,
        federated_evaluation=scenario.evaluation.federated,
        evaluate_last_only=scenario.evaluation.federated_rounds == "last",
        roster=roster,
    )
    train_config = round_config(state)
    end_of_round = end_of_round_hook(state, strategy.take_rows, strategy.take_evaluation)
    if accountant is not None:
        end_of_round = _recording_central_dp(end_of_round, state, accountant)
    try:
        result = strategy.start(
            grid=grid,
            initial_arrays=state.initial,
            num_rounds=scenario.federation.rounds - state.offset,
            timeout=settings.round_timeout,
            train_config=ConfigRecord(train_config),
            evaluate_config=ConfigRecord(train_config),  # sites read the same signed plan
            evaluate_fn=end_of_round,
        )
    except RoundFailed as err:
        return fail_run(state, str(err))
    if strategy.aggregated_rounds == 0 and scenario.federation.rounds > state.offset:
        return fail_run(state, f"no site trained in any round (last: {strategy.last_outcome})")
    return finish_run(state, result.arrays if result.arrays is not None else state.initial)


def _strategy(scenario: ScenarioConfig, accountant: RdpAccountant | None) -> Strategy:
    """Flower's strategy, wrapped in Flower's central-DP clipping when the scenario asks."""
    num_clients = scenario.federation.num_clients
    inner = build_strategy(
        scenario.strategy,
        num_clients,
        weighted_by_key=wire.UNIT_WEIGHT,
    )
    if accountant is None:
        return inner
    return central_dp.wrap(inner, scenario, accountant)


def central_accountant(settings: ServerSettings) -> RdpAccountant | None:
    """Flower's accountant, continued from run.json on resume; over budget fails before round 1.

    Checked before the run folder is touched, so a refused run leaves nothing half-written.
    """
    scenario = settings.scenario
    if not scenario.central_dp.enabled:
        return None
    state, done = None, 0
    if settings.resume:
        info = RunRecorder(settings.run_dir, scenario, "").read_run_info() or {}
        state = (info.get(central_dp.INFO_KEY) or {}).get("accountant_state")
        found = latest_checkpoint(settings.run_dir)
        done = found[0] if found else 0
    accountant = central_dp.new_accountant(scenario, state)
    central_dp.check_budget(scenario, accountant, scenario.federation.rounds - done)
    return accountant


def _recording_central_dp(
    hook: Callable[[int, ArrayRecord], MetricRecord | None],
    state: RunState,
    accountant: RdpAccountant,
) -> Callable[[int, ArrayRecord], MetricRecord | None]:
    """After each round, run.json carries the client-level epsilon and the accountant state."""

    def end_of_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        metrics = hook(server_round, arrays)
        info = central_dp.run_info(state.settings.scenario, accountant)
        state.recorder.update_info(**{central_dp.INFO_KEY: info})
        return metrics

    return end_of_round


def server_evaluation(scenario: ScenarioConfig, engine: str) -> str:
    """Where the server may evaluate: only on data it owns (see ``EvaluationConfig``).

    A natural partition's test rows are the sites' own held-out rows: the coordinator does not
    own them, so ``auto`` means no server evaluation there, ``public`` is refused, and the
    ``oracle`` that evaluates on them anyway exists in simulation only, marked as such.
    """
    asked = scenario.evaluation.server
    site_rows = scenario.partition.scheme == "natural" or scenario.task is not None
    if asked == "auto":
        return "none" if site_rows else "public"
    if asked == "public" and site_rows:
        raise ConfigError(
            "evaluation.server = public: this dataset's test rows are the sites' own held-out "
            "rows; use federated evaluation (evaluation.federated = true) or 'none'"
        )
    if asked == "oracle" and engine == DEPLOYMENT:
        raise ConfigError("evaluation.server = oracle evaluates on site rows: simulation only")
    if asked == "oracle" and scenario.task is not None and not scenario.sites:
        raise ConfigError("evaluation.server = oracle: a task's rows are at the sites ([[sites]])")
    return asked


def start_run(settings: ServerSettings) -> RunState:
    """Load data and model, pick the starting point, open the run folder and its audit log."""
    scenario = settings.scenario
    evaluation = server_evaluation(scenario, settings.engine)
    splits = coordinator_splits(scenario, oracle=evaluation == "oracle")
    model = _initial_model(scenario, splits)
    run_id, offset, initial = _starting_point(settings, model)
    keys = _server_keys(settings)
    signers = _registered_signers(settings)
    if settings.sim_nodes_dir is not None:  # the virtual sites pin this run's server keys
        pin_server(settings.sim_nodes_dir, keys.exchange_fingerprint, keys.verify_key_path)
    recorder = _open_records(settings, run_id, offset, initial)
    publish_keys(settings.run_dir, signers, keys.verify_key_path)
    recorder.update_info(
        evaluation=_evaluation_record(scenario, evaluation), data=_data_record(scenario)
    )
    audit = AuditLog(settings.run_dir, keys.signing, run_id)
    audit.run_started(
        scenario=scenario.name,
        config_hash=config_hash(scenario.without_budgets()),
        code_version=__version__,
        engine=settings.engine,
        transport=recorder.transport,
        strategy=scenario.strategy.model_dump(mode="json"),
        server_keys=keys.fingerprints(),
        registered_nodes={name: fingerprint(key) for name, key in sorted(signers.items())},
        resumed_at=offset or None,
    )
    if isinstance(signers, SimNodeKeys):  # a virtual node made later: published and audited
        signers.on_register = functools.partial(_register_late_node, settings.run_dir, audit)
    return RunState(
        settings, splits, model, run_id, offset, initial, recorder, keys, signers, audit,
        evaluation,
    )  # fmt: skip


def _register_late_node(run_dir: Path, audit: AuditLog, node: str, key: Any) -> None:
    """A virtual node made after run start: its key into the run folder, its name and key
    fingerprint into the audit log (with the round's rows), as run-start records the others."""
    publish_key(run_dir, node, key)
    audit.node_registered(node, key)


def _data_record(scenario: ScenarioConfig) -> dict[str, Any]:
    """What run.json (and the report) says about the data: a declared task over each site's
    own files, and what each site fitted on its own rows; or a packaged dataset's partitions."""
    task = scenario.task
    if task is None:
        return {"source": "packaged", "dataset": scenario.data.dataset}
    return {
        "source": "site files",
        "task": task.name,
        "kind": task.kind,
        "classes": list(task.classes),
        "columns": list(task.columns) or [c for c in [task.text_column] if c],
        "identifiers_never_read": list(task.identifiers),
        "fitted_at_each_site": [f"median of {c} (imputed value)" for c in task.site_fitted],
    }


def _evaluation_record(scenario: ScenarioConfig, source: str) -> dict[str, Any]:
    """What run.json (and the report) says about where the model was evaluated."""
    data = {
        "public": "the dataset's public test split, held by the coordinator",
        "none": "none (the test rows are the sites' own)",
        "oracle": f"SIMULATION-ONLY ORACLE on the {SITE_ROWS} (not possible in deployment)",
    }[source]
    return {
        "server": source,
        "server_data": data,
        "federated": scenario.evaluation.federated,
        "federated_data": "each site's held-out rows, released as noised counts charged to its "
        "ledger"
        if scenario.evaluation.federated
        else None,
    }


def _open_records(
    settings: ServerSettings, run_id: str, offset: int, initial: ArrayRecord
) -> RunRecorder:
    """run.json (with how updates travel) and scenario.toml; a resume notes where it resumed."""
    security = settings.scenario.security
    transport = {
        **settings.transport,
        "sealed_updates": security.sealed_updates,
        "secure_aggregation": security.secure_aggregation,
    }
    recorder = RunRecorder(
        settings.run_dir, settings.scenario, run_id, engine=settings.engine, transport=transport
    )
    recorder.start()
    if offset:
        resumes = [*(recorder.read_run_info() or {}).get("resumed_from", [])]
        resumes.append({"round": offset, "weights_sha256": arrays_sha256(initial), "at": utc_now()})
        recorder.update_info(resumed_from=resumes)
    return recorder


def _registered_signers(settings: ServerSettings) -> Mapping[str, Ed25519PublicKey]:
    """Deployment's registry folder, or the simulation's virtual nodes; never a reply's claim.

    Every reply is a signed envelope, so every run needs them, sealed or not.
    """
    if settings.registered_keys_dir is not None:
        return signers_from_directory(settings.registered_keys_dir)
    if settings.sim_nodes_dir is not None:
        return signers_from_sim_nodes(settings.sim_nodes_dir)
    raise ConfigError("a run needs the registered node keys (registered_keys_dir)")


def round_config(state: RunState) -> dict[str, Any]:
    """What every training request carries (the strategy adds the round number)."""
    scenario = state.settings.scenario
    config = {
        wire.RUN_ID: state.run_id,
        wire.NUM_ROUNDS: scenario.federation.rounds,
        wire.SCENARIO: scenario.without_budgets().model_dump_json(),
    }
    assignment = read_assignment(state.settings.registered_keys_dir)
    if assignment and scenario.task is None:  # packaged rows: who trains which, signed
        config[wire.PARTITIONS] = dump_assignment(assignment)
    return config


def fail_run(state: RunState, reason: str) -> Path:
    """A run that trained nothing ends ``failed`` with its reason, and exports no model: an
    untrained model must never look like a result."""
    log.error("run failed: %s", reason)
    state.audit.run_finished(None, status="failed", reason=reason)
    state.recorder.update_info(failure=reason)
    state.recorder.finish(model_hash=None, status="failed")
    return state.settings.run_dir


def finish_run(state: RunState, final: ArrayRecord) -> Path:
    settings = state.settings
    model_hash = export_final_model(settings.run_dir, settings.scenario, state.splits, final)
    state.audit.run_finished(model_hash)
    state.recorder.finish(model_hash=model_hash)
    return settings.run_dir


def _server_keys(settings: ServerSettings) -> ServerKeys:
    if settings.server_keys_dir is not None:
        return load_server_keys(settings.server_keys_dir)
    return ensure_server_keys(settings.run_dir / KEYS_DIR)


def _initial_model(scenario: ScenarioConfig, splits: DatasetSplits) -> torch.nn.Module:
    """The model the server starts from, aggregates into and evaluates: for a custom factory,
    the same factory the sites build, checked against the scenario's ``factory_sha256`` when it
    names one (the coordinator's own check; each site checks its own approved digest)."""
    torch.manual_seed(scenario.train.seed)
    return build_model(
        scenario.model,
        tuple(splits.input_shape),
        splits.num_classes,
        factory_sha256=scenario.model.factory_sha256,
    )


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


def end_of_round_hook(
    state: RunState, take_rows: RowSource, take_evaluation: EvaluationSource | None = None
) -> Callable[[int, ArrayRecord], MetricRecord | None]:
    """Evaluate the aggregate where the server may, checkpoint it, and record the round (with
    the sites' federated evaluation, if any) in metrics and audit log."""
    settings, recorder, audit = state.settings, state.recorder, state.audit
    scenario, model, offset = settings.scenario, state.model, state.offset

    test_rows: list[Dataset] = []  # the test rows through a frozen trunk, computed once

    def end_of_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        rnd = server_round + offset
        if server_round == 0 and offset > 0:
            return None  # the resumed checkpoint was evaluated when it was written
        weights = arrays.to_torch_state_dict()
        metrics: dict[str, Any] = {}
        if state.evaluation != "none":
            load_global_state(model, weights)  # the server's own copy of a frozen public trunk
            if not test_rows:
                test = rows_through_trunk(
                    model, state.splits.test, settings.cache_dir, scenario.train
                )
                test_rows.append(test)
            metrics = evaluate(
                model,
                test_rows[0],
                batch_size=scenario.train.eval_batch_size,
                device=scenario.train.device,
            ).as_dict()
        server_metrics = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        federated = take_evaluation(rnd) if take_evaluation is not None else {}
        rows = take_rows(rnd)
        audit.client_rows(rnd, rows)
        audit.round_finished(rnd, server_metrics, rows, model_sha256=arrays_sha256(arrays))
        if rnd > 0:
            path = save_weights(
                recorder.checkpoint_path(rnd),
                weights,
                {"round": rnd, "run_id": recorder.run_id, "metrics": server_metrics,
                 "config_hash": (recorder.read_run_info() or {}).get("config_hash")},
            )  # fmt: skip
            audit.checkpoint(rnd, path, file_sha256(path))
        recorder.record_round(rnd, metrics, rows, federated)
        if settings.on_round is not None:
            outcome = {"server": metrics, "clients": rows, "federated": federated}
            settings.on_round(rnd, scenario.federation.rounds, outcome)
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
    return file_sha256(path)


def file_sha256(path: Path) -> str:
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
