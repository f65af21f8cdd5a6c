"""The ClientApp for secure aggregation: the same node round, behind Flower's SecAgg+ mod.

``secaggplus_mod`` runs the SecAgg+ key exchange itself and calls this client only in the
"collect masked vectors" stage; it masks what ``fit`` returns before anything leaves the node.
``fit`` is a thin adapter around :func:`clients.train_round.train_round`, the one place where
policy, budget, DP-SGD and the ledger live, so both transports spend and record privacy alike.

A refusing node answers with weight 0: its masked vector then adds nothing to the sum, while its
refusal still reaches the server's records through the metrics.
"""

from __future__ import annotations

import json

import torch
from flwr.app import Context
from flwr.client import Client, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import NDArrays, Scalar

from clients.train_round import Refused, Verified, train_round, verify_request
from fedmodel.privacy.spend import commit
from server import wire

torch.set_num_threads(1)  # as in clients/client_app.py: many nodes on few cores


class SecAggNodeClient(NumPyClient):
    """One node under SecAgg+: train like any round, return weights for masking."""

    def __init__(self, context: Context) -> None:
        self.node_context = context

    def fit(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[NDArrays, int, dict[str, Scalar]]:
        """Verify the signed request (the global model comes from it, not from ``parameters``),
        train, and return weight 1 (0 for a refusal: its masked vector then adds nothing)."""
        sim_dir = str(config[wire.SIM_NODES_DIR]) if wire.SIM_NODES_DIR in config else None
        blob = config.get(wire.SIGNED_REQUEST)
        content = wire.request_record(blob if isinstance(blob, bytes) else b"", sim_dir)
        verified = verify_request(content, self.node_context, "train")
        if not isinstance(verified, Verified):
            return parameters, 0, wire.flatten_reply(verified)
        session, channel, request = verified.session, verified.channel, verified.request
        names = json.loads(str(channel.request.config[wire.TENSOR_NAMES]))
        outcome = train_round(session, request, channel.global_state(), self.node_context)
        if isinstance(outcome, Refused):
            return parameters, 0, wire.flatten_reply(outcome.record())
        commit(session.ledger, outcome.reserved, None)  # masked: no single update leaves
        flat = wire.flatten_reply({wire.METRICS: outcome.metrics, wire.NODE: outcome.node})
        trained = [outcome.state_dict[name].detach().cpu().numpy() for name in names]
        return trained, 1, flat


def client_fn(context: Context) -> Client:
    return SecAggNodeClient(context).to_client()


app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod])
