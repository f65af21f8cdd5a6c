"""TEST-ONLY attackers: the real ClientApp, whose reply is corrupted for chosen partitions.

Nothing here ships: the product has no attack code. The wrapper trains honestly (so the node's
ledger and metrics stay real) and then replaces the trained weights of the attacking partitions,
only in runs whose scenario name starts with ``attacked-`` so one simulation can hold a clean
run and attacked runs side by side.
"""

from __future__ import annotations

import json

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from clients.client_app import train
from server import wire

ATTACKED_PREFIX = "attacked-"
ATTACKS = {0: "nan", 1: "scaled-sign-flip"}  # partition id -> what it sends
FLIP_SCALE = -20.0  # sends global - 20 * (its honest update)


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
    reply = call_next(msg, context)
    scenario = json.loads(str(msg.content[wire.CONFIG][wire.SCENARIO]))
    kind = ATTACKS.get(int(context.node_config["partition-id"]))
    if kind is None or not scenario["name"].startswith(ATTACKED_PREFIX) or reply.has_error():
        return reply
    if wire.ARRAYS in reply.content:
        reply.content[wire.ARRAYS] = corrupt(
            kind, reply.content[wire.ARRAYS], msg.content[wire.ARRAYS]
        )
    return reply


attacked_app = ClientApp(mods=[attack_mod])
attacked_app.train()(train)
