"""One training round on a node: policy, budget, DP-SGD, ledger, reply.

The order is the safety argument: the node checks its own policy, then projects the epsilon it
would reach after this round from its ledger (the source of truth, not memory), refuses if that
passes its own cap, and only then trains. Spending is written to the ledger before the update
leaves the node, so a crash after training can over-count but never under-count.

:func:`train_round` is that sequence, and the only one: the Message-API reply
(:func:`run_train_round`, plain or sealed) and the SecAgg+ client (``clients/secagg_client.py``)
both call it, so every transport spends and records privacy the same way. When the run seals
updates, the node first checks the server against its pin and trains only on a global model the
pinned server signed for this run and round; otherwise it refuses (``clients/sealing.py``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict

from clients.local_data import client_train_set
from clients.node_config import NODE_FILE, NodeConfig, load_node_config
from clients.policy import policy_violation
from clients.sealing import SealedChannel, load_pin
from fedmodel.config import ConfigError, ScenarioConfig
from fedmodel.crypto.keys import load_signing_key
from fedmodel.crypto.seal import SealError
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


def resolve_node(context: Context, request: RoundRequest) -> tuple[NodeConfig, Path, int, int]:
    """The node's own config, its folder, and its (partition id, number of partitions).

    Deployment: ``--node-config "config=/etc/fedmodel/node.toml"``. Simulation: every virtual
    node has ``<sim-nodes-dir>/node-<partition-id>/node.toml``, written by ``fedmodel simulate``.
    The folder holding ``node.toml`` also holds the node's server pin (``clients/sealing.py``).
    """
    nc = context.node_config
    if "config" in nc:
        node_file = Path(str(nc["config"]))
    elif request.sim_nodes_dir is not None and "partition-id" in nc:
        node_file = request.sim_nodes_dir / f"node-{int(nc['partition-id'])}" / NODE_FILE
    else:
        raise ConfigError("node has no configuration: start it with --node-config config=PATH")
    node = load_node_config(node_file)
    pid = node.data.partition_id if node.data.partition_id is not None else nc.get("partition-id")
    nparts = node.data.num_partitions or nc.get("num-partitions")
    if pid is None or nparts is None:
        raise ConfigError(f"{node.name}: data.partition_id / data.num_partitions not configured")
    return node, node_file.parent, int(pid), int(nparts)


@dataclass(frozen=True)
class NodeSession:
    """One request as this node sees it: who it is, what it holds, what it was asked."""

    request: RoundRequest
    node: NodeConfig
    folder: Path
    partition_id: int
    num_partitions: int
    signing_key: Ed25519PrivateKey
    ledger: Ledger


def open_session(config: ConfigRecord, context: Context) -> NodeSession:
    request = RoundRequest.from_config(config)
    node, folder, pid, nparts = resolve_node(context, request)
    signing_key = load_signing_key(node.signing_key)
    ledger = Ledger(node.ledger_dir, signing_key, node=node.name)
    return NodeSession(request, node, folder, pid, nparts, signing_key, ledger)


@dataclass(frozen=True)
class Trained:
    """A trained update, already recorded in the ledger, ready for either transport."""

    state_dict: dict[str, torch.Tensor]
    metrics: dict[str, int | float]
    node: dict[str, str]

    def record(self) -> RecordDict:
        return wire.update_record(ArrayRecord(self.state_dict), self.metrics, self.node)


@dataclass(frozen=True)
class Refused:
    """A round the node declined; the refusal is already in its ledger."""

    record_dict: RecordDict

    def record(self) -> RecordDict:
        return self.record_dict


RoundOutcome = Trained | Refused


def run_train_round(content: RecordDict, context: Context) -> RecordDict:
    """The Message-API reply: plain, or sealed to the pinned server when the run seals."""
    session = open_session(content[wire.CONFIG], context)
    request = session.request
    if not request.scenario.security.sealed_updates:
        return train_round(session, content[wire.ARRAYS].to_torch_state_dict(), context).record()
    pin = load_pin(session.folder)
    try:
        channel = SealedChannel.connect(pin, content[wire.CONFIG], request.run_id, request.round)
        global_state = channel.open_global(content)
    except SealError as err:  # an impostor server or a forged model: train nothing, say why
        return refuse(session, f"server not trusted: {err}").record()
    outcome = train_round(session, global_state, context)
    if isinstance(outcome, Refused):
        return outcome.record()
    return channel.seal(outcome.state_dict, outcome.metrics, outcome.node, session.signing_key)


def train_round(
    session: NodeSession, global_state: Mapping[str, torch.Tensor], context: Context
) -> RoundOutcome:
    """Policy, budget, DP-SGD and ledger for one round; shared by every transport."""
    request, node, ledger = session.request, session.node, session.ledger
    scenario = request.scenario
    pid = session.partition_id

    if (reason := _policy_reason(node, scenario)) is not None:
        return refuse(session, reason)

    dataset = client_train_set(scenario, pid, session.num_partitions)
    n = len(dataset)
    sample_rate, steps = sampling_plan(n, scenario.train.batch_size, scenario.train.epochs)
    dp = scenario.dp
    if dp.enabled:
        noise = _noise_for_run(context, request, n, sample_rate, steps)
        dp = dp.model_copy(update={"noise_multiplier": noise, "target_epsilon": None})
        if (reason := _policy_reason(node, scenario.model_copy(update={"dp": dp}))) is not None:
            return refuse(session, reason)
        if node.budget is not None:
            decision = check_round(
                ledger.history(),
                (noise, sample_rate, steps),
                node.budget,
                dp.accountant,
                delta=dp.delta,
            )
            if not decision.allowed:
                return refuse(session, decision.reason, decision.projected_epsilon)

    seed = _round_seed(session)
    torch.manual_seed(seed)  # model construction; train() seeds its own streams from ``seed``
    model = build_model(
        scenario.model, dataset_input_shape(scenario), dataset_num_classes(scenario)
    )
    model.load_state_dict(global_state)
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
        seed=seed,
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
    return Trained(
        state_dict=dict(result.state_dict),
        metrics=metrics,
        node={"name": node.name, "ledger-hash": head.hash},
    )


def _round_seed(session: NodeSession) -> int:
    """The seed of this round's sampling and noise streams (``train(seed=)``).

    Never the same twice on a node: it hashes the ledger's entry count, which grows with every
    round the node trains or refuses, in any run. Two updates sharing a noise stream (two
    clients, two rounds, or two runs over changed data) would let whoever sees both subtract
    the noise away. Derived from the node's private key, so the server, which chooses
    ``train.seed``, cannot regenerate the noise when ``dp.secure_mode`` is off (with it on,
    Opacus draws from a CSPRNG instead). Reproducible from the node's own disk, so a copy of a
    node folder replays the same streams: what makes simulations comparable.
    """
    position = session.ledger.head().count
    digest = hashlib.sha256(
        b"fedmodel/dp-seed/v1\0"
        + session.signing_key.private_bytes_raw()
        + f"{session.request.scenario.train.seed}:{position}".encode()
    ).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _policy_reason(node: NodeConfig, scenario: ScenarioConfig) -> str | None:
    """The site's policy, plus the transport rule that only the node can enforce."""
    if node.policy.require_sealed_updates and not scenario.security.sealed_updates:
        return "site policy requires sealed updates; this run sends updates unsealed"
    return policy_violation(node.policy, scenario)


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


def refuse(session: NodeSession, reason: str, projected: float | None = None) -> Refused:
    """Record the refusal in the ledger first, then tell the server."""
    ledger = session.ledger
    if projected is None:
        projected = ledger.epsilon(session.request.scenario.dp.delta)
    entry = ledger.append_refusal(
        run_id=session.request.run_id,
        round=session.request.round,
        reason=reason,
        projected_epsilon=projected,
    )
    head = ledger.head()
    line = ledger.signed_line(entry.hash)
    return Refused(
        wire.refusal_record(session.node.name, reason, projected, head.hash, head.count, line)
    )


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
