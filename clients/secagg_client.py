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

import numpy as np
import torch
from flwr.app import ConfigRecord, Context
from flwr.client import Client, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import NDArrays, Scalar

from clients.train_round import Refused, open_session, train_round
from server import wire

torch.set_num_threads(1)  # as in clients/client_app.py: many nodes on few cores


class SecAggNodeClient(NumPyClient):
    """One node under SecAgg+: train like any round, return weights for masking."""

    def __init__(self, context: Context) -> None:
        self.node_context = context

    def fit(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[NDArrays, int, dict[str, Scalar]]:
        session = open_session(ConfigRecord(dict(config)), self.node_context)
        names = json.loads(str(config[wire.TENSOR_NAMES]))
        global_state = {
            name: torch.from_numpy(np.array(p, copy=True))
            for name, p in zip(names, parameters, strict=True)
        }
        outcome = train_round(session, global_state, self.node_context)
        if isinstance(outcome, Refused):
            return parameters, 0, wire.flatten_reply(outcome.record())
        flat = wire.flatten_reply({wire.METRICS: outcome.metrics, wire.NODE: outcome.node})
        trained = [outcome.state_dict[name].detach().cpu().numpy() for name in names]
        return trained, int(outcome.metrics["num-examples"]), flat


def client_fn(context: Context) -> Client:
    return SecAggNodeClient(context).to_client()


app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod])
