"""The ClientApp for secure aggregation: the same node round, behind Flower's SecAgg+ mod.

``secaggplus_mod`` runs the SecAgg+ key exchange itself and calls this client only in the
"collect masked vectors" stage; it masks what ``fit`` returns before anything leaves the node.
``fit`` is a thin adapter around :func:`clients.train_round.train_round`, the one place where
policy, budget, DP-SGD and the ledger live, so both transports spend and record privacy alike.

A refusing node answers with weight 0: its masked vector then adds nothing to the sum, while its
refusal still reaches the server's records through the metrics.

Update compression under SecAgg+ is *stacked*, not sent: the site quantises its noised update as
asked (:mod:`fedmodel.compression`, int8/int4, top-k) and decodes it again itself
(:func:`fedmodel.compression.round_trip`), so what ``fit`` returns is exactly what a server
would have rebuilt from the compressed payload. SecAgg+ then clips and quantises those floats
into its own integer field (``secagg_clipping_range``, ``secagg_quantization_range``) and masks
them; the field, not our codes, is what travels, so no bytes are saved, but the aggregate is the
mean of the sites' dequantised updates, within SecAgg+'s own quantisation step. Masking needs
every site's vector in one shared field, which our per-site, per-tensor scales are not.
"""

from __future__ import annotations

import json

import torch
from flwr.app import Context
from flwr.client import Client, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import NDArrays, Scalar

from clients.train_round import (
    Refused,
    Verified,
    compression_seed,
    site_compression,
    train_round,
    verify_request,
)
from fedmodel.compression import round_trip
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
        coding = site_compression(session, request)
        stacked = f"{coding.describe()}, decoded at the site" if coding.active else "none"
        node = {**outcome.node, wire.COMPRESSION: stacked}
        flat = wire.flatten_reply({wire.METRICS: outcome.metrics, wire.NODE: node})
        state = round_trip(outcome.state_dict, outcome.reference, coding, compression_seed(outcome))
        trained = [state[name].detach().cpu().numpy() for name in names]
        return trained, 1, flat


def client_fn(context: Context) -> Client:
    return SecAggNodeClient(context).to_client()


app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod])
