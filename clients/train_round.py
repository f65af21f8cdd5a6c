"""One training round on a node: verify, decide, spend, train, answer.

The order is the safety argument:

1. the request is verified against the node's pinned server key before anything in it is read
   (``clients/sealing.py``): a relay cannot change the scenario, the plan or the transport;
2. the site's own policy decides (``clients/policy.py``), including the delta it allows for its
   number of rows;
3. the spend is reserved through the one door (:mod:`fedmodel.privacy.spend`): the high-water
   mark, a repeated request, the node's cap and the run's target epsilon are checked and the
   spend is written to the ledger under one lock, and the seed of the round's sampling and noise
   is derived there;
4. only then does DP-SGD run, with that seed;
5. the reply is signed (and sealed when the run seals), and the spend committed with the SHA-256
   of what left.

:func:`train_round` is steps 2-4 and the only path that trains: the Message-API reply
(:func:`run_train_round`) and the SecAgg+ client (``clients/secagg_client.py``) both call it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord, Context, RecordDict
from torch.utils.data import Dataset

from clients.policy import delta_violation, policy_violation
from clients.sealing import ServerChannel
from fedmodel.compression import compress_update
from fedmodel.config import CompressionConfig, ConfigError, DPConfig, ScenarioConfig
from fedmodel.crypto.chain import ChainHead
from fedmodel.crypto.keys import load_signing_key
from fedmodel.crypto.pin import PinMissing, load_pin
from fedmodel.crypto.seal import SealError, SignedRequest
from fedmodel.data.errors import DataError, SiteDataError
from fedmodel.data.local import model_io, node_rows
from fedmodel.device import manual_seed
from fedmodel.errors import FedmodelError
from fedmodel.models import ModelError, build_model
from fedmodel.node_config import NODE_FILE, NodeConfig, load_node_config
from fedmodel.partitions import Assignment, parse_assignment
from fedmodel.privacy.accountant import calibrate_noise, sampling_plan
from fedmodel.privacy.highwater import LedgerRollback
from fedmodel.privacy.ledger import NO_DP, Ledger, LedgerEntry, LedgerError
from fedmodel.privacy.ledger_copy import check_holds, parse_head, suffix_for
from fedmodel.privacy.release import history_entry, noised_summary, site_stats
from fedmodel.privacy.spend import Denied, Reserved, SiteRules, SpendPlan, commit, reserve
from fedmodel.privacy.spend import refuse as refuse_in_ledger
from fedmodel.sim_nodes import ensure_sim_node
from fedmodel.training import train
from fedmodel.training.errors import TrainingError
from fedmodel.training.loop import derive_seed, predict_proba
from fedmodel.training.trunk import load_global_state, rows_through_trunk
from server import wire

PLAN_STATE = "dp-plan"
NO_PIN = "no server pin: the site must pin the coordinator (fedmodel node pin)"
MODEL_UPDATE = "model-update"
TRAIN_METRICS = "train-metrics"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundRequest:
    """What the server asked for, read from the signed request only."""

    run_id: str
    round: int
    num_rounds: int
    scenario: ScenarioConfig
    proximal_mu: float
    digest: bytes = b""  # SHA-256 of the signed blob: the request, exactly as the server signed it
    partitions: Assignment | None = None  # the coordinator's signed table, for packaged rows
    held: ChainHead | None = None  # the head of this node's ledger the server holds a copy to

    @classmethod
    def from_signed(cls, signed: SignedRequest, digest: bytes = b"") -> RoundRequest:
        config = signed.config
        try:
            scenario = ScenarioConfig.model_validate_json(str(config[wire.SCENARIO]))
            num_rounds = int(config[wire.NUM_ROUNDS])
            mu = float(config.get(wire.PROXIMAL_MU, 0.0))
            held = parse_head(config.get(wire.LEDGER_HELD))
        except Exception:  # pydantic, a missing key: the request itself is malformed
            raise ConfigError("malformed training request (scenario or plan)") from None
        table = None
        if wire.PARTITIONS in config:
            table = parse_assignment(str(config[wire.PARTITIONS]), "request")
        return cls(signed.run_id, signed.round, num_rounds, scenario, mu, digest, table, held)


def node_file_for(context: Context, sim_nodes_dir: str | None) -> Path:
    """``node.toml`` of this node.

    Deployment: ``--node-config "config=/etc/fedmodel/node.toml"``. Simulation: every virtual
    node has ``<sim-nodes-dir>/node-<partition-id>/node.toml``, made from the plan ``fedmodel
    simulate`` declared when the node first needs it; only a node started without its own
    ``config`` looks there.
    """
    nc = context.node_config
    if "config" in nc:
        return Path(str(nc["config"]))
    if sim_nodes_dir and "partition-id" in nc:  # made on the node's first request
        return ensure_sim_node(Path(sim_nodes_dir), int(nc["partition-id"])) / NODE_FILE
    raise ConfigError("node has no configuration: start it with --node-config config=PATH")


@dataclass(frozen=True)
class NodeSession:
    """This node as one request sees it: who it is, what it holds, what it trusts."""

    node: NodeConfig
    folder: Path
    partition_id: int | None  # None: the site trains on its own files ([data] path)
    num_partitions: int | None
    signing_key: Ed25519PrivateKey
    ledger: Ledger

    @property
    def rules(self) -> SiteRules:
        policy = self.node.policy
        return SiteRules(
            cap=self.node.budget,
            policy=policy.model_dump(mode="json"),
            quiet=not policy.dataset_size_public,
        )

    def rows(self, request: RoundRequest, *, test: bool = False) -> Dataset:
        """This site's rows for the request: its own files, or the packaged partition the
        coordinator assigned it (see :func:`partition_reason` for a contradiction)."""
        partition = None
        if request.partitions is not None and self.node.name in request.partitions:
            partition = request.partitions[self.node.name]
        elif self.partition_id is not None and self.num_partitions is not None:
            partition = (self.partition_id, self.num_partitions)
        files = self.node.data.site_files()
        if files is not None and files.cache_dir is None:  # tokenised once, on this site's disk
            files = files.model_copy(update={"cache_dir": self.node.cache_dir})
        return node_rows(request.scenario, files, partition, test)

    def partition_reason(self, request: RoundRequest) -> str | None:
        """Packaged rows come from the coordinator's signed table: a site it left out, or one
        whose own ``node.toml`` names another partition, refuses (two sites, one partition)."""
        if request.scenario.task is not None or request.partitions is None:
            return None
        assigned = request.partitions.get(self.node.name)
        if assigned is None:
            return "the coordinator's partition table assigns this site no partition"
        own = self.node.data
        if own.partition_id is not None and (own.partition_id, own.num_partitions) != assigned:
            return (
                f"the coordinator assigned partition {assigned[0]} of {assigned[1]}; this site's "
                f"node.toml says {own.partition_id} of {own.num_partitions}"
            )
        return None


def open_session(node_file: Path, context: Context) -> NodeSession:
    node = load_node_config(node_file)
    nc = context.node_config
    pid = node.data.partition_id if node.data.partition_id is not None else nc.get("partition-id")
    nparts = node.data.num_partitions or nc.get("num-partitions")
    if node.data.path is not None or pid is None or nparts is None:
        pid = nparts = None  # its own files, or the partition the coordinator's request assigns
    signing_key = load_signing_key(node.signing_key)
    ledger = Ledger(node.ledger_dir, signing_key, node=node.name, mark=node.high_water_mark)
    return NodeSession(
        node,
        node_file.parent,
        None if pid is None else int(pid),
        None if nparts is None else int(nparts),
        signing_key,
        ledger,
    )


@dataclass(frozen=True)
class Trained:
    """A trained update whose spend is reserved in the ledger, ready for either transport."""

    state_dict: dict[str, torch.Tensor]
    metrics: dict[str, int | float]
    node: dict[str, str]
    reserved: Reserved
    reference: dict[str, torch.Tensor]  # the weights training started from (update = diff)


@dataclass(frozen=True)
class Refused:
    """A round the node declined; the refusal is already in its ledger."""

    record_dict: RecordDict

    def record(self) -> RecordDict:
        return self.record_dict


RoundOutcome = Trained | Refused


@dataclass(frozen=True)
class Verified:
    """A request this node verified against its pin, for the handler it was signed for."""

    session: NodeSession
    channel: ServerChannel
    request: RoundRequest


def verify_request(content: RecordDict, context: Context, task: str) -> Verified | RecordDict:
    """The node, its pinned channel and the request; or the signed refusal to send instead.

    Nothing of the request is read before its signature verifies. Then it must be meant for this
    handler (``task``), this node (its Flower node id) and now (not expired); and when the
    server names the ledger head this node reported earlier in the run, the ledger must still
    hold it. A request failing any of these is refused as "unverified": the refusal names no
    run, so it can never stand in for this node's answer to the genuine request.
    """
    request_record = content.config_records.get(wire.SIGNED_REQUEST)
    sim_dir = request_record.get(wire.SIM_NODES_DIR) if request_record is not None else None
    session = open_session(node_file_for(context, str(sim_dir) if sim_dir else None), context)
    try:
        channel = ServerChannel.open(load_pin(session.folder), content)
        request = RoundRequest.from_signed(channel.request, _blob_digest(request_record))
    except SealError as err:  # an impostor server, a relay's edit: nothing is read, say why
        return refuse_unverified(session, f"request not verified ({err.reason})")
    except PinMissing:
        return refuse_unverified(session, NO_PIN)
    except ConfigError:  # a signed request this node cannot read
        return refuse_unverified(session, "request could not be read by this node")
    if (reason := _misdirected(channel.request.config, context, task)) is not None:
        return refuse_unverified(session, reason)
    check_expected_head(session.ledger, channel.request.config.get(wire.EXPECTED_HEAD))
    if request.scenario.security.sealed_updates and channel.server_public is None:
        return refuse(session, request, "the run seals updates but names no server key").record()
    return Verified(session, channel, request)


def _misdirected(config: Mapping[str, Any], context: Context, task: str) -> str | None:
    """Why a genuinely signed request is not one for this handler, this node, now."""
    if config.get(wire.TASK) != task:
        return f"request signed for another task than {task!r}"
    if config.get(wire.DST_NODE) != int(context.node_id):
        return "request signed for another node"
    not_after = config.get(wire.NOT_AFTER)
    if not isinstance(not_after, int | float) or time.time() > not_after:
        return "request expired"
    return None


def check_expected_head(ledger: Ledger, head: Any) -> None:
    """The coordinator's last record of this node's ledger must still be in it: a ledger rolled
    back with its high-water mark (a restored backup of the whole node folder) stops here."""
    if head is None:
        return
    check_holds(ledger.entries(), parse_head(head), ledger.path)


def _blob_digest(record: Any) -> bytes:
    blob = record.get(wire.BLOB) if record is not None else None
    return hashlib.sha256(blob).digest() if isinstance(blob, bytes) else b""


def run_train_round(content: RecordDict, context: Context) -> RecordDict:
    """The Message-API reply: verify the request, train, answer signed (sealed if asked)."""
    verified = verify_request(content, context, "train")
    if not isinstance(verified, Verified):
        return verified
    session, channel, request = verified.session, verified.channel, verified.request
    outcome = train_round(session, request, channel.global_state(), context)
    if isinstance(outcome, Refused):
        return outcome.record()
    state: Mapping[str, torch.Tensor] = outcome.state_dict
    coding = site_compression(session, request)
    if coding.active:  # the noised update, encoded: post-processing of the DP release
        state = compress_update(state, outcome.reference, coding, compression_seed(outcome))
    return answer(verified, state, outcome.metrics, outcome.node, outcome.reserved)


def site_compression(session: NodeSession, request: RoundRequest) -> CompressionConfig:
    """How this site encodes its noised update: its node.toml decides, honouring the
    coordinator's request unless it says otherwise (``[compression] follow_request``)."""
    return session.node.compression.resolve(request.scenario.compression)


def compression_seed(outcome: Trained) -> int:
    """The stochastic rounding's own stream, derived from the spend's seed under another
    purpose: independent of DP-SGD's noise stream, as post-processing needs, and unknown to
    the server like it."""
    return derive_seed(outcome.reserved.seed, 0, "update-compression")


def answer(
    verified: Verified,
    state_dict: Mapping[str, torch.Tensor],
    metrics: Mapping[str, int | float],
    node: Mapping[str, str],
    reserved: Reserved,
) -> RecordDict:
    """Sign (or seal) what leaves, then commit the reserved spend with its SHA-256."""
    session = verified.session
    suffix = suffix_for(session.ledger, verified.request.held, reserved.entry.seq + 1)
    payload = wire.update_payload(state_dict, metrics, node, suffix.encode())
    envelope = verified.channel.reply(payload, session.node.name, session.signing_key)
    commit(session.ledger, reserved, hashlib.sha256(envelope).hexdigest())
    return wire.envelope_record(envelope, session.node.name)


def train_round(
    session: NodeSession,
    request: RoundRequest,
    global_state: Mapping[str, torch.Tensor],
    context: Context,
) -> RoundOutcome:
    """Policy, the spend door, DP-SGD; shared by every transport."""
    node, scenario = session.node, request.scenario

    if (reason := policy_reason(node, scenario)) is not None:
        return refuse(session, request, reason)
    model = site_model(node, scenario)
    if isinstance(model, str):
        return refuse(session, request, model)
    if (reason := session.partition_reason(request)) is not None:
        return refuse(session, request, reason)
    try:
        dataset = session.rows(request)
    except SiteDataError as err:
        return refuse(session, request, site_data_refusal(scenario, err))
    n = len(dataset)
    if scenario.dp.enabled and (reason := delta_violation(node.policy, scenario.dp, n)):
        if session.rules.quiet:  # the limit is 1/(10 n): it would name the row count
            reason = "delta above this site's limit"
        return refuse(session, request, reason)
    sample_rate, steps = sampling_plan(n, scenario.train.batch_size, scenario.train.epochs)
    metrics_release = _metrics_release(node, scenario)
    dp = scenario.dp
    if dp.enabled:
        noise = _noise_for_run(context, session, request, n, sample_rate, steps, metrics_release)
        dp = dp.model_copy(update={"noise_multiplier": noise, "target_epsilon": None})
        if (reason := policy_reason(node, scenario.model_copy(update={"dp": dp}))) is not None:
            return refuse(session, request, reason)
    releases = (MODEL_UPDATE, TRAIN_METRICS) if metrics_release else (MODEL_UPDATE,)
    plan = _spend_plan(request, dp, n, sample_rate, steps, releases, metrics_release)
    decision = reserve(session.ledger, plan, session.rules, seed_secret=seed_secret(session))
    if isinstance(decision, Denied):
        return refused_from(session, decision.entry, request)

    manual_seed(decision.seed)  # the round's global stream; train() seeds its own
    load_global_state(model, global_state)  # a frozen public trunk stays the site's own copy
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}  # update's origin
    proximal = None
    if request.proximal_mu > 0:
        proximal = (request.proximal_mu, {k: v.clone() for k, v in model.state_dict().items()})
    # the same rows through a frozen trunk computed once (the site's disk, never sent)
    rows = rows_through_trunk(model, dataset, node.cache_dir, scenario.train)
    result = train(
        model,
        rows,
        train_cfg=scenario.train,
        optim_cfg=scenario.optimizer,
        dp_cfg=dp,
        prior_history=(),  # cumulative epsilon comes from the ledger entry
        proximal=proximal,
        seed=decision.seed,
    )
    entry = decision.entry
    if dp.enabled and not _ran_as_reserved(result.history, entry):
        raise LedgerError("training ran other steps than the spend reserved for them")
    if not all(bool(torch.isfinite(t).all()) for t in result.state_dict.values()):
        raise TrainingError("non-finite update withheld (the spend stays counted)")
    metrics = _accounting_metrics(session, entry, dp, scenario.dp.noise_multiplier)
    if metrics_release:
        model.load_state_dict(result.state_dict)
        metrics.update(_released_train_metrics(model, rows, scenario, node))
    return Trained(
        state_dict=dict(result.state_dict),
        metrics=metrics,
        node={"name": node.name, "ledger-hash": entry.hash, "releases": ",".join(releases)},
        reserved=decision,
        reference=start,
    )


def _ran_as_reserved(ran: list, entry: LedgerEntry) -> bool:
    """Training added exactly the DP-SGD steps the reservation counted (first history entry)."""
    noise, rate, steps = entry.history[0]
    return sum(int(h[2]) for h in ran) == steps and all(
        abs(float(h[0]) - noise) <= 1e-12 * noise and abs(float(h[1]) - rate) <= 1e-12 for h in ran
    )


def _spend_plan(
    request: RoundRequest,
    dp: DPConfig,
    n: int,
    sample_rate: float,
    steps: int,
    releases: tuple[str, ...],
    metrics_noise: float | None,
) -> SpendPlan:
    if not dp.enabled:  # the site's policy allows it: recorded, and epsilon is unbounded
        return SpendPlan(
            run_id=request.run_id, round=request.round, history=(), releases=releases,
            noise_multiplier=0.0, sample_rate=sample_rate, steps=steps,
            max_grad_norm=dp.max_grad_norm, delta=dp.delta, dataset_size=n,
            mechanism=NO_DP, planned_rounds=request.num_rounds,
            request_digest=request.digest,
        )  # fmt: skip
    noise = float(dp.noise_multiplier or 0.0)
    history = [(noise, sample_rate, steps)]
    if metrics_noise is not None:
        history.append(history_entry(metrics_noise))
    target = request.scenario.dp.target_epsilon
    return SpendPlan(
        run_id=request.run_id,
        round=request.round,
        history=tuple(history),
        releases=releases,
        noise_multiplier=noise,
        sample_rate=sample_rate,
        steps=steps + (1 if metrics_noise is not None else 0),
        max_grad_norm=dp.max_grad_norm,
        delta=dp.delta,
        dataset_size=n,
        planned_rounds=request.num_rounds,
        run_target_epsilon=target,
        accountant=dp.accountant,
        request_digest=request.digest,
    )


def _accounting_metrics(
    session: NodeSession, entry: LedgerEntry, dp: DPConfig, request_noise: float | None
) -> dict:
    """What a reply says by default: public configuration and the node's accounting of it.

    No loss, accuracy or example count. With ``policy.dataset_size_public = false`` not even the
    sample rate, steps or epsilon, which reveal the number of batches a site's rows fill.
    """
    metrics: dict[str, int | float] = {
        "partition-id": -1 if session.partition_id is None else session.partition_id,
        "ledger-count": entry.seq + 1,
    }
    if not dp.enabled:  # no noise, no guarantee: the report marks the round unprotected
        return metrics
    metrics |= {"delta": float(dp.delta), "max-grad-norm": float(dp.max_grad_norm)}
    calibrated = entry.noise_multiplier != request_noise
    if session.node.policy.dataset_size_public or not calibrated:
        # a noise calibrated to a target epsilon is a function of the sample rate, hence of n
        metrics["noise-multiplier"] = float(dp.noise_multiplier or 0.0)
    if session.node.policy.dataset_size_public:
        metrics.update(
            {
                "epsilon": _finite(entry.epsilon),
                "epsilon-rdp": _finite(entry.epsilon_rdp),
                "sample-rate": float(entry.sample_rate or 0.0),
                "steps": int(entry.history[0][2]) if entry.history else 0,
            }
        )
    return metrics


def _metrics_release(node: NodeConfig, scenario: ScenarioConfig) -> float | None:
    """The noise of the training-metrics release, when this site opts in (and runs DP)."""
    policy = node.policy
    if policy.share_train_metrics and scenario.dp.enabled:
        return float(policy.metrics_noise_multiplier)
    return None


def _released_train_metrics(
    model: torch.nn.Module, dataset, scenario: ScenarioConfig, node: NodeConfig
) -> dict[str, float]:
    """Noised count, accuracy and loss of the released model on the site's training rows."""
    labels, probs, _ = predict_proba(
        model, dataset, batch_size=scenario.train.eval_batch_size, device=scenario.train.device
    )
    stats = site_stats(labels, probs, node.policy.metrics_loss_bound)
    summary = noised_summary(stats, node.policy.metrics_noise_multiplier)
    return {
        "num-examples": summary["count"],
        "train-accuracy": summary["accuracy"],
        "train-loss": summary["loss"],
    }


def seed_secret(session: NodeSession) -> bytes:
    """The node's private key bytes: what makes its noise streams unguessable to the server."""
    return session.signing_key.private_bytes_raw()


def site_model(node: NodeConfig, scenario: ScenarioConfig) -> torch.nn.Module | str:
    """The requested model, built before anything is spent; or the reason to refuse instead.

    A custom factory is built with the digest this site's policy lists for it, never the one the
    request carries: a module changed since the site approved it is refused before its import.
    The initial weights are seeded inside ``build_model`` (the caller's RNG untouched) and then
    replaced by the global model. A model that cannot be built (changed sources, an Opacus check
    it fails) is refused with one fixed line; the detail goes to the site's log only.
    """
    cfg = scenario.model
    listed = None
    if cfg.name == "custom":
        listed = node.policy.allowed_model_factories.get(str(cfg.factory))
        if listed is None:  # policy_violation says so first; never import unchecked
            return f"site policy does not allow model factory {cfg.factory}"
    shape, classes = model_io(scenario)
    try:
        return build_model(cfg, shape, classes, seed=scenario.train.seed, factory_sha256=listed)
    except ModelError as err:
        log.warning("%s: model not built: %s", node.name, err)
        name = cfg.factory if cfg.name == "custom" else cfg.name
        return f"model {name} could not be built under this site's checks (see the site's log)"


def policy_reason(node: NodeConfig, scenario: ScenarioConfig) -> str | None:
    """The site's policy, plus the transport rule that only the node can enforce."""
    if node.policy.require_sealed_updates and not scenario.security.sealed_updates:
        return "site policy requires sealed updates; this run sends updates unsealed"
    if node.data.path is not None and scenario.task is None:
        return "this site trains on its own files; the run asks for a packaged dataset, not a task"
    return policy_violation(node.policy, scenario)


def _finite(value: float | None) -> float:
    """The ledger stores an unbounded epsilon as null; metrics carry it as inf."""
    return float("inf") if value is None else float(value)


def _noise_for_run(
    context: Context,
    session: NodeSession,
    request: RoundRequest,
    n: int,
    sample_rate: float,
    steps: int,
    metrics_noise: float | None,
) -> float:
    """Noise for this run: fixed, or calibrated so the whole plan stays within the target.

    The target is a cap on the run (:mod:`fedmodel.privacy.spend` refuses past it), so the
    calibration counts what this run already spent in the ledger and every round left in the
    signed plan, metrics releases included. A round that repeats the run's earlier sampling
    keeps its noise; calibration is deterministic, and ``context.state`` only saves the seconds
    a PRV search costs.
    """
    dp = request.scenario.dp
    if dp.noise_multiplier is not None:
        return float(dp.noise_multiplier)
    spent = [e for e in session.ledger.entries() if e.spends and e.run_id == request.run_id]
    same = [
        e for e in spent if e.kind == "round" and e.sample_rate == sample_rate and e.history[:1]
    ]
    if same and same[-1].history[0][2] == steps:
        return float(same[-1].noise_multiplier)  # type: ignore[arg-type]
    prior = [h for e in spent for h in e.history]
    remaining = max(1, request.num_rounds - request.round + 1)
    for release_noise, count in _planned_releases(
        session.node, request.scenario, metrics_noise, remaining
    ):
        prior += [history_entry(release_noise)] * count
    key = json.dumps([request.run_id, n, sample_rate, steps, request.num_rounds, prior])
    cached = context.state.config_records.get(PLAN_STATE)
    if cached is not None and cached.get("key") == key:
        return float(cached["noise"])
    assert dp.target_epsilon is not None
    noise = calibrate_noise(
        dp.target_epsilon, dp.delta, sample_rate, steps * remaining, dp.accountant, prior
    )
    context.state.config_records[PLAN_STATE] = ConfigRecord({"key": key, "noise": noise})
    return noise


def _planned_releases(
    node: NodeConfig, scenario: ScenarioConfig, metrics_noise: float | None, remaining: int
) -> list[tuple[float, int]]:
    """(noise, how many) of the Gaussian releases the rest of the run will add besides DP-SGD:
    the site's training metrics each round, its evaluation counts when the run evaluates
    federated (each remaining round, or once at the end)."""
    planned = [] if metrics_noise is None else [(metrics_noise, remaining)]
    evaluation = scenario.evaluation
    if evaluation.federated and node.policy.share_eval_metrics:
        count = remaining if evaluation.federated_rounds == "every" else 1
        planned.append((float(node.policy.metrics_noise_multiplier), count))
    return planned


def refuse(session: NodeSession, request: RoundRequest, reason: str) -> Refused:
    """Record a refusal decided before any spend (policy, delta) in the ledger, then say it."""
    entry = refuse_in_ledger(session.ledger, request.run_id, request.round, reason, session.rules)
    return refused_from(session, entry, request)


def refuse_unverified(session: NodeSession, reason: str) -> RecordDict:
    """A request the node could not verify (or that was not meant for it, here, now): refuse,
    in the ledger and to the sender, under the run id ``unverified``. Nothing of the request is
    trusted, so the refusal names no run and round of it; the server never counts it as an
    answer (a relay cannot use it to crowd out the node's answer to the genuine request)."""
    entry = refuse_in_ledger(session.ledger, wire.UNVERIFIED_RUN, 0, reason, session.rules)
    return refused_from(session, entry).record()


def refused_from(
    session: NodeSession, entry: LedgerEntry, request: RoundRequest | None = None
) -> Refused:
    """The refusal record: the node's signed ledger line, and exactly the values in it (the
    server rejects a refusal whose reason, head, count or epsilon differ from the line's), with
    the entries up to it the server does not hold yet (none to a request nobody verified)."""
    line = session.ledger.signed_line(entry.hash)
    projected = float("nan") if entry.projected_epsilon is None else entry.projected_epsilon
    reason = str(entry.reason)
    suffix = b""
    if request is not None:
        suffix = suffix_for(session.ledger, request.held, entry.seq + 1).encode()
    return Refused(
        wire.refusal_record(
            session.node.name, reason, projected, entry.hash, entry.seq + 1, line, suffix
        )
    )


def site_data_refusal(scenario: ScenarioConfig, err: SiteDataError) -> str:
    """What the coordinator hears when the site's files do not fit the task: the task's name
    for the column (public: the task declares it), never a row, a value or a path; the whole
    line goes to the site's own log."""
    log.warning("site data refused: %s", err)
    task = scenario.task.name if scenario.task is not None else scenario.data.dataset
    where = f" (column {err.column!r})" if err.column is not None else ""
    return f"site data does not match task {task!r}{where}; details in the site's log"


FAILURE_CODES: tuple[tuple[type[BaseException], int, str], ...] = (
    (LedgerRollback, 1003, "ledger-rollback: the ledger is behind its high-water mark"),
    (LedgerError, 1003, "ledger: the node's ledger failed its checks"),
    (DataError, 1002, "data: the node's data could not be used"),
    (ConfigError, 1001, "config: the node's configuration is invalid"),
    (SealError, 1004, "request: the request could not be verified"),
    (FedmodelError, 1005, "node: the node could not run this round"),
)


def describe_failure(err: BaseException) -> tuple[int, str]:
    """(code, one line) for an error reply: the kind of failure, never a path or a data value.

    The detail stays in the site's own log; what crosses the relay says only which check
    stopped the round, so a coordinator knows whom to call and about what.
    """
    for kind, code, text in FAILURE_CODES:
        if isinstance(err, kind):
            return code, f"{text}; training stopped (details in the site's log)"
    return 1099, "internal: the node failed unexpectedly (details in the site's log)"
