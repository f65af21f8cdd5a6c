"""Secure aggregation: a ServerApp on Flower's SecAgg+ workflow, recording runs like any other.

Flower offers SecAgg+ only on its legacy API (``SecAggPlusWorkflow`` inside a ``DefaultWorkflow``
with a ``LegacyContext``; the nodes run ``secaggplus_mod`` around a ``NumPyClient``). Each node
uploads its DP-SGD-trained weights masked with pairwise and private masks, so the ServerApp and
the relay see only the weighted sum. A node that drops out after sharing its keys is unmasked
from the shares its neighbours hold, as long as ``secagg_reconstruction_threshold`` of them
remain, so the round still produces an aggregate.

What stays the same as the Message-API run (``server/federation.py``): the run folder, the
audit log, checkpoints, central evaluation and the per-client rows (from the metrics each node
reports next to its masked vector). What cannot: per-update validation and robust strategies,
which need the individual updates; the aggregate itself is still checked (names, shapes,
finite values, norm bound) before it may replace the global model.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context
from flwr.common import FitIns, FitRes, Parameters, Scalar
from flwr.common import ndarrays_to_parameters as to_parameters
from flwr.common import parameters_to_ndarrays as to_ndarrays
from flwr.server import LegacyContext, ServerConfig
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid, ServerApp

from server import wire
from server.federation import (
    REPLAY_GUARD_FILE,
    REQUEST_SLACK_S,
    RunState,
    ServerSettings,
    end_of_round_hook,
    finish_run,
    round_config,
    start_run,
)
from server.sealing import SignedTraffic
from server.validation import update_problem

log = logging.getLogger(__name__)


def build_secagg_server_app(settings: ServerSettings) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_secagg_federation(grid, context, settings)

    return app


def run_secagg_federation(grid: Grid, context: Context, settings: ServerSettings) -> None:
    state = start_run(settings)
    scenario = settings.scenario
    traffic = SignedTraffic.for_run(
        state.keys, state.signers, state.run_id, settings.run_dir / REPLAY_GUARD_FILE, sealed=False
    )
    traffic.request_ttl = settings.round_timeout + REQUEST_SLACK_S
    strategy = SecAggRecordingStrategy(state, traffic)
    legacy = LegacyContext(
        context=context,
        config=ServerConfig(
            num_rounds=scenario.federation.rounds - state.offset,
            round_timeout=settings.round_timeout,
        ),
        strategy=strategy,
    )
    DefaultWorkflow(fit_workflow=secagg_workflow(state))(grid, legacy)
    finish_run(state, strategy.latest)


def secagg_workflow(state: RunState) -> SecAggPlusWorkflow:
    """SecAgg+ with the scenario's parameters; weights are bounded by the largest node."""
    sec = state.settings.scenario.security
    return SecAggPlusWorkflow(
        num_shares=sec.secagg_num_shares,
        reconstruction_threshold=sec.secagg_reconstruction_threshold,
        max_weight=1.0,  # every site weighs 1 (server.wire.weigh_uniformly); 0 when it refuses
        clipping_range=sec.secagg_clipping_range,
        quantization_range=sec.secagg_quantization_range,
        timeout=sec.secagg_timeout,
    )


class SecAggRecordingStrategy(LegacyFedAvg):
    """Legacy FedAvg whose aggregate is SecAgg+'s sum, plus the run's rows and evaluation."""

    def __init__(self, state: RunState, traffic: SignedTraffic) -> None:
        scenario = state.settings.scenario
        nodes = max(2, scenario.strategy.min_nodes(scenario.federation.num_clients))
        super().__init__(
            fraction_fit=scenario.strategy.fraction_train,
            fraction_evaluate=0.0,
            min_fit_clients=nodes,
            min_available_clients=nodes,
            initial_parameters=to_parameters(state.initial.to_numpy_ndarrays()),
        )
        self.state = state
        self.traffic = traffic
        self.names = list(state.initial.keys())
        self.latest = state.initial
        self.pending_rows: dict[int, list[dict[str, Any]]] = {}
        self._sampled: dict[int, list[int]] = {}
        self._end_of_round = end_of_round_hook(state, self.take_rows)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        rnd = server_round + self.state.offset
        signed = {**round_config(self.state), wire.TENSOR_NAMES: json.dumps(self.names)}
        arrays = self.named(to_ndarrays(parameters))
        clients = client_manager.sample(
            num_clients=self.num_fit_clients(client_manager.num_available())[0],
            min_num_clients=self.min_fit_clients,
        )
        self._sampled[rnd] = [c.node_id for c in clients]
        return [(c, FitIns(parameters, self._config(signed, arrays, rnd, c))) for c in clients]

    def _config(
        self, signed: dict[str, Scalar], arrays: ArrayRecord, rnd: int, client: ClientProxy
    ) -> dict[str, Scalar]:
        """One node's FitIns config: its own signed request (and where simulated nodes live)."""
        blob = self.traffic.sign_legacy_request(signed, arrays, rnd, int(client.node_id))
        config: dict[str, Scalar] = {wire.SIGNED_REQUEST: blob}
        if self.state.settings.sim_nodes_dir is not None:
            config[wire.SIM_NODES_DIR] = str(self.state.settings.sim_nodes_dir)
        return config

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Every result carries the same unmasked aggregate; check it before it may be used."""
        rnd = server_round + self.state.offset
        rows = [wire.client_row(wire.unflatten_reply(res.metrics)) for _, res in results]
        rows += _dropout_rows(self._sampled.pop(rnd, []), results, failures)
        self.pending_rows[rnd] = rows
        if not results or sum(res.num_examples for _, res in results) == 0:
            log.warning("round %s: no node contributed weight; the model is unchanged", rnd)
            return None, {}
        aggregate = self.named(to_ndarrays(results[0][1].parameters))
        max_norm = self.state.settings.scenario.strategy.max_update_norm
        problem = update_problem(aggregate, self.latest, max_norm)
        if problem is not None:
            rows.append({"node": "secagg-sum", "status": "rejected", "reason": problem})
            return None, {}
        return to_parameters(aggregate.to_numpy_ndarrays()), {}

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        """Central evaluation, checkpoint and records: the same hook as the Message-API run."""
        self.latest = self.named(to_ndarrays(parameters))
        metrics = self._end_of_round(server_round, self.latest)
        if metrics is None:
            return None
        return float(metrics.get("loss", 0.0)), dict(metrics)

    def take_rows(self, rnd: int) -> list[dict[str, Any]]:
        return self.pending_rows.pop(rnd, [])

    def named(self, arrays: Sequence[np.ndarray]) -> ArrayRecord:
        """Legacy lists carry no names, and SecAgg+ dequantises to float64: restore both."""
        reference = self.state.initial
        if len(arrays) != len(self.names):
            raise ValueError(f"aggregate has {len(arrays)} tensors, the model {len(self.names)}")
        return ArrayRecord(
            {
                name: Array(np.asarray(a, dtype=reference[name].numpy().dtype))
                for name, a in zip(self.names, arrays, strict=True)
            }
        )


def _dropout_rows(
    sampled: list[int],
    results: list[tuple[ClientProxy, FitRes]],
    failures: list[tuple[ClientProxy, FitRes] | BaseException],
) -> list[dict[str, Any]]:
    """One error row per sampled node without a result; SecAgg+ reports failures without ids."""
    answered = {proxy.node_id for proxy, _ in results}
    reasons = sorted({_failure_reason(f) for f in failures})
    reason = "dropped out of secure aggregation" + (f": {'; '.join(reasons)}" if reasons else "")
    return [
        {"node": f"flower-{nid}", "status": "error", "reason": reason}
        for nid in sampled
        if nid not in answered
    ]


def _failure_reason(failure: tuple[ClientProxy, FitRes] | BaseException) -> str:
    if isinstance(failure, BaseException):
        error = failure.args[0] if failure.args else failure
        return wire.short_reason(str(getattr(error, "reason", error)))
    return f"node {failure[0].node_id}: {failure[1].status.message}"
