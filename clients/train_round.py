"""One training round on a node: policy, budget, DP-SGD, ledger, reply.

The order is the safety argument: the node checks its own policy, then projects the epsilon it
would reach after this round from its ledger (the source of truth, not memory), refuses if that
passes its own cap, and only then trains. Spending is written to the ledger before the update
leaves the node, so a crash after training can over-count but never under-count.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict

from clients.local_data import client_train_set
from clients.node_config import NODE_FILE, NodeConfig, load_node_config
from clients.policy import policy_violation
from fedmodel.config import ConfigError, ScenarioConfig
from fedmodel.crypto.keys import load_signing_key
from fedmodel.errors import FedmodelError
from fedmodel.models import build_model
from fedmodel.privacy.accountant import calibrate_noise, sampling_plan
from fedmodel.privacy.budget import check_round
from fedmodel.privacy.ledger import Ledger
from fedmodel.training import train
from server import wire

PLAN_STATE = "dp-plan"


@dataclass(frozen=True)
class RoundRequest:
    """What the server asked for, parsed and validated."""

    run_id: str
    round: int
    num_rounds: int
    scenario: ScenarioConfig
    proximal_mu: float
    sim_nodes_dir: Path | None

    @classmethod
    def from_config(cls, config: ConfigRecord) -> RoundRequest:
        try:
            scenario = ScenarioConfig.model_validate_json(str(config[wire.SCENARIO]))
        except Exception as err:  # pydantic or missing key: the request itself is malformed
            raise ConfigError(f"malformed training request: {err}") from None
        nodes_dir = config.get(wire.SIM_NODES_DIR)
        return cls(
            run_id=str(config[wire.RUN_ID]),
            round=int(config[wire.ROUND]),
            num_rounds=int(config[wire.NUM_ROUNDS]),
            scenario=scenario,
            proximal_mu=float(config.get(wire.PROXIMAL_MU, 0.0)),
            sim_nodes_dir=Path(str(nodes_dir)) if nodes_dir else None,
        )


def resolve_node(context: Context, request: RoundRequest) -> tuple[NodeConfig, int, int]:
    """The node's own config, and its (partition id, number of partitions).

    Deployment: ``--node-config "config=/etc/fedmodel/node.toml"``. Simulation: every virtual
    node has ``<sim-nodes-dir>/node-<partition-id>/node.toml``, written by ``fedmodel simulate``.
    """
    nc = context.node_config
    if "config" in nc:
        node = load_node_config(str(nc["config"]))
    elif request.sim_nodes_dir is not None and "partition-id" in nc:
        node = load_node_config(
            request.sim_nodes_dir / f"node-{int(nc['partition-id'])}" / NODE_FILE
        )
    else:
        raise ConfigError("node has no configuration: start it with --node-config config=PATH")
    pid = node.data.partition_id if node.data.partition_id is not None else nc.get("partition-id")
    nparts = node.data.num_partitions or nc.get("num-partitions")
    if pid is None or nparts is None:
        raise ConfigError(f"{node.name}: data.partition_id / data.num_partitions not configured")
    return node, int(pid), int(nparts)


def run_train_round(arrays: ArrayRecord, config: ConfigRecord, context: Context) -> RecordDict:
    request = RoundRequest.from_config(config)
    node, pid, nparts = resolve_node(context, request)
    scenario = request.scenario
    ledger = Ledger(node.ledger_dir, load_signing_key(node.signing_key), node=node.name)

    if (reason := policy_violation(node.policy, scenario)) is not None:
        return _refuse(ledger, node, request, reason, projected=ledger.epsilon(scenario.dp.delta))

    dataset = client_train_set(scenario, pid, nparts)
    n = len(dataset)
    sample_rate, steps = sampling_plan(n, scenario.train.batch_size, scenario.train.epochs)
    dp = scenario.dp
    if dp.enabled:
        noise = _noise_for_run(context, request, n, sample_rate, steps)
        dp = dp.model_copy(update={"noise_multiplier": noise, "target_epsilon": None})
        if (
            reason := policy_violation(node.policy, scenario.model_copy(update={"dp": dp}))
        ) is not None:
            return _refuse(ledger, node, request, reason, projected=ledger.epsilon(dp.delta))
        if node.budget is not None:
            decision = check_round(
                ledger.history(),
                (noise, sample_rate, steps),
                node.budget,
                dp.accountant,
                delta=dp.delta,
            )
            if not decision.allowed:
                return _refuse(ledger, node, request, decision.reason, decision.projected_epsilon)

    torch.manual_seed(scenario.train.seed * 100_003 + request.round * 101 + pid)
    model = build_model(
        scenario.model, dataset_input_shape(scenario), dataset_num_classes(scenario)
    )
    model.load_state_dict(arrays.to_torch_state_dict())
    proximal = None
    if request.proximal_mu > 0:
        proximal = (request.proximal_mu, {k: v.clone() for k, v in model.state_dict().items()})
    result = train(
        model,
        dataset,
        train_cfg=scenario.train,
        optim_cfg=scenario.optimizer,
        dp_cfg=dp,
        prior_history=(),  # cumulative epsilon comes from the ledger entry below
        proximal=proximal,
    )
    epsilon = epsilon_rdp = 0.0
    if dp.enabled:  # the signed entry carries the cumulative epsilon: no second computation
        entry = ledger.append_round(
            run_id=request.run_id,
            round=request.round,
            noise_multiplier=result.noise_multiplier,
            sample_rate=result.sample_rate,
            steps=result.steps,
            max_grad_norm=dp.max_grad_norm,
            delta=dp.delta,
            dataset_size=n,
            accountant_history_added=result.history,
        )
        epsilon, epsilon_rdp = _finite(entry.epsilon), _finite(entry.epsilon_rdp)
    head = ledger.head()
    metrics = {
        "num-examples": n,
        "partition-id": pid,
        "train-loss": float(result.train_loss),
        "train-accuracy": float(result.train_accuracy),
        "epsilon": epsilon,
        "epsilon-rdp": epsilon_rdp,
        "delta": float(dp.delta) if dp.enabled else 0.0,
        "noise-multiplier": float(result.noise_multiplier or 0.0),
        "sample-rate": float(result.sample_rate),
        "steps": int(result.steps),
        "max-grad-norm": float(dp.max_grad_norm) if dp.enabled else 0.0,
        "ledger-count": int(head.count),
    }
    return RecordDict(
        {
            wire.ARRAYS: ArrayRecord(result.state_dict),
            wire.METRICS: MetricRecord(metrics),
            wire.NODE: ConfigRecord({"name": node.name, "ledger-hash": head.hash}),
        }
    )


def _finite(value: float | None) -> float:
    """The ledger stores an unbounded epsilon as null; metrics carry it as inf."""
    return float("inf") if value is None else float(value)


def _noise_for_run(
    context: Context, request: RoundRequest, n: int, sample_rate: float, steps: int
) -> float:
    """Noise for this run: fixed, or calibrated once on every step of every planned round.

    Calibration is deterministic, so a restarted node recomputes the same value; the cache in
    ``context.state`` only saves the seconds a PRV search costs.
    """
    dp = request.scenario.dp
    if dp.noise_multiplier is not None:
        return float(dp.noise_multiplier)
    key = json.dumps([request.run_id, n, sample_rate, steps, request.num_rounds])
    cached = context.state.config_records.get(PLAN_STATE)
    if cached is not None and cached.get("key") == key:
        return float(cached["noise"])
    assert dp.target_epsilon is not None
    noise = calibrate_noise(
        dp.target_epsilon, dp.delta, sample_rate, steps * request.num_rounds, dp.accountant
    )
    context.state.config_records[PLAN_STATE] = ConfigRecord({"key": key, "noise": noise})
    return noise


def _refuse(
    ledger: Ledger, node: NodeConfig, request: RoundRequest, reason: str, projected: float
) -> RecordDict:
    ledger.append_refusal(
        run_id=request.run_id, round=request.round, reason=reason, projected_epsilon=projected
    )
    head = ledger.head()
    return wire.refusal_record(node.name, reason, projected, head.hash, head.count)


def dataset_input_shape(scenario: ScenarioConfig) -> tuple[int, ...]:
    from clients.local_data import dataset_splits

    return tuple(dataset_splits(scenario).input_shape)


def dataset_num_classes(scenario: ScenarioConfig) -> int:
    from clients.local_data import dataset_splits

    return int(dataset_splits(scenario).num_classes)


def describe_failure(err: BaseException) -> str:
    """One line for an error reply: user errors verbatim, bugs with their type."""
    if isinstance(err, FedmodelError):
        return str(err)
    return f"{type(err).__name__}: {err}"
