"""TEST-ONLY attackers: the real ClientApp, whose reply is corrupted for chosen partitions.

Nothing here ships: the product has no attack code. The wrapper trains honestly (so the node's
ledger and metrics stay real) and then replaces the trained weights of the attacking partitions,
only in runs whose scenario name starts with ``attacked-`` so one simulation can hold a clean
run and attacked runs side by side.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from clients.client_app import train
from fedmodel.crypto.keys import load_signing_key
from fedmodel.crypto.pin import load_pin
from fedmodel.crypto.seal import (
    ReplayGuard,
    open_request,
    open_signed_update,
    sign_update,
    state_dict_from_bytes,
)
from fedmodel.node_config import load_node_config
from server import wire

ATTACKED_PREFIX = "attacked-"
ATTACKS = {0: "nan", 1: "scaled-sign-flip"}  # partition id -> what it sends
FLIP_SCALE = -50.0  # sends global - 50 * (its honest update)


def corrupt(kind: str, local: ArrayRecord, global_: ArrayRecord) -> ArrayRecord:
    out = {}
    for i, name in enumerate(local.keys()):
        new, old = local[name].numpy(), global_[name].numpy()
        if kind == "nan" and i == 0:
            new = np.full_like(new, np.nan)
        elif kind == "scaled-sign-flip":
            new = (old + FLIP_SCALE * (new - old)).astype(new.dtype)
        out[name] = Array(np.ascontiguousarray(new))
    return ArrayRecord(out)


def attack_mod(msg: Message, context: Context, call_next) -> Message:
    """A malicious site: it trains, then signs a corrupted update with its own (registered) key,
    exactly as a compromised node could; signatures prove origin, not honesty."""
    reply = call_next(msg, context)
    kind = ATTACKS.get(int(context.node_config["partition-id"]))
    if kind is None or reply.has_error() or wire.UPDATE not in reply.content:
        return reply
    sim_dir = str(msg.content[wire.SIGNED_REQUEST][wire.SIM_NODES_DIR])
    folder = Path(sim_dir) / f"node-{int(context.node_config['partition-id'])}"
    request = open_request(msg.content[wire.SIGNED_REQUEST][wire.BLOB], load_pin(folder).verify_key)
    if not json.loads(request.config[wire.SCENARIO])["name"].startswith(ATTACKED_PREFIX):
        return reply
    key = load_signing_key(folder / "keys" / "signing.ed25519")
    opened = open_signed_update(
        reply.content[wire.UPDATE][wire.ENVELOPE],
        known_signers={"me": key.public_key()} | {_node_name(folder): key.public_key()},
        run_id=request.run_id,
        round=request.round,
        seen=ReplayGuard(),
    )
    honest = wire.update_from_payload(opened.payload)
    global_ = ArrayRecord(state_dict_from_bytes(request.payload))
    bad = corrupt(kind, honest[wire.ARRAYS], global_)
    ledger = state_dict_from_bytes(opened.payload).get(wire.LEDGER_TENSOR)
    payload = wire.update_payload(  # its real ledger entries travel on: only the weights lie
        bad.to_torch_state_dict(),
        dict(honest[wire.METRICS]),
        dict(honest[wire.NODE]),
        ledger.numpy().tobytes() if ledger is not None else b"",
    )
    envelope = sign_update(
        payload, signer=key, run_id=request.run_id, round=request.round, node_id=opened.node_id
    )
    reply.content = wire.envelope_record(envelope, opened.node_id)
    return reply


def _node_name(folder: Path) -> str:
    return load_node_config(folder / "node.toml").name


attacked_app = ClientApp(mods=[attack_mod])
attacked_app.train()(train)
