"""SecAgg+ with DP-SGD clients: one node drops mid-round and the aggregate is still produced.

Test-only mods around the product's SecAgg+ ClientApp: partition 1 raises while training (after
SecAgg+ shared its keys, so its masks must be reconstructed from its neighbours' shares), and a
spy between the SecAgg+ mod and the client keeps each survivor's plaintext weights on its own
node's disk, so the test can check the unmasked sum against them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp

from clients import secagg_client
from fedmodel.crypto.pin import load_pin
from fedmodel.crypto.seal import open_request, state_dict_from_bytes
from fedmodel.privacy.ledger import verify_ledger
from fedmodel.scenarios import apply_overrides
from fedmodel.training.checkpoint import load_weights
from server import wire
from server.audit import verify_audit
from server.records import read_metrics
from tests.federation.helpers import run, small_tabular

CLIENTS, DROPPING = 3, 1
SPY_FILE = "secagg-spy.npz"


def drop_or_spy(msg: Message, context: Context, call_next) -> Message:
    if int(context.node_config["partition-id"]) == DROPPING:
        raise RuntimeError("node lost power mid-round")
    return spy(msg, context, call_next)


def spy(msg: Message, context: Context, call_next) -> Message:
    """Keep the plaintext weights the client hands SecAgg+ (and the global model it was sent,
    as ``global/NAME``) on the node's own disk, then pass the reply on unchanged."""
    pid = int(context.node_config["partition-id"])
    reply = call_next(msg, context)
    config = msg.content.config_records["fitins.config"]
    folder = Path(str(config[wire.SIM_NODES_DIR])) / f"node-{pid}"
    request = open_request(config[wire.SIGNED_REQUEST], load_pin(folder).verify_key)
    names = json.loads(str(request.config[wire.TENSOR_NAMES]))
    arrays = reply.content.array_records["fitres.parameters"].to_numpy_ndarrays()
    weight = reply.content.metric_records["fitres.num_examples"]["num_examples"]
    sent = {f"global/{k}": v.numpy() for k, v in state_dict_from_bytes(request.payload).items()}
    np.savez(folder / SPY_FILE, **dict(zip(names, arrays, strict=True)), **sent, weight=weight)
    return reply


dropping_app = ClientApp(client_fn=secagg_client.client_fn, mods=[secaggplus_mod, drop_or_spy])


def run_secagg(app: ClientApp, overrides: dict, run_dir: Path) -> Path:
    """A one-round SecAgg+ run of the small tabular scenario whose nodes run ``app``."""
    cfg = apply_overrides(
        small_tabular("fedavg", clients=CLIENTS),
        {"security.secure_aggregation": True, "federation.rounds": 1, **overrides},
        "test",
    )
    mp = pytest.MonkeyPatch()
    mp.setattr(secagg_client, "app", app)  # what simulate() picks for SecAgg runs
    try:
        return run(cfg, run_dir)
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def secagg_run(tmp_path_factory):
    return run_secagg(dropping_app, {}, tmp_path_factory.mktemp("secagg") / "run")


def test_round_completes_without_the_dropped_node(secagg_run):
    rounds = read_metrics(secagg_run)
    assert [r["round"] for r in rounds] == [0, 1]
    rows = {c["status"]: c for c in rounds[1]["clients"]}
    assert sorted(c["status"] for c in rounds[1]["clients"]) == ["error", "ok", "ok"]
    assert "dropped out of secure aggregation" in rows["error"]["reason"]
    assert "lost power" in rows["error"]["reason"]
    assert rounds[1]["server"]["accuracy"] > rounds[0]["server"]["accuracy"] + 0.2


def test_unmasked_sum_is_the_survivors_weighted_mean(secagg_run):
    survivors = [k for k in range(CLIENTS) if k != DROPPING]
    spies = [np.load(secagg_run / "nodes" / f"node-{k}" / SPY_FILE) for k in survivors]
    weights = np.array([float(s["weight"]) for s in spies])
    state, _ = load_weights(secagg_run / "checkpoints" / "round-0001.safetensors")
    for name, tensor in state.items():
        mean = sum(w * s[name] for w, s in zip(weights, spies, strict=True)) / weights.sum()
        np.testing.assert_allclose(tensor.numpy(), mean, atol=1e-4)


def test_dp_clients_still_spend_through_their_ledgers(secagg_run):
    info = read_metrics(secagg_run)[1]["clients"]
    for row in (c for c in info if c["status"] == "ok"):
        ledger = verify_ledger(secagg_run / "nodes" / row["node"] / "ledger")
        spends = [e for e in ledger.entries if e.spends]
        assert ledger.ok and spends[-1].epsilon == pytest.approx(row["epsilon"])
        assert ledger.entries[-1].kind == "commit" and ledger.entries[-1].update_sha256 is None
        assert row["noise_multiplier"] == 1.0
    audit = verify_audit(secagg_run)
    assert audit.ok and audit.counts["accepted"] == 2 and audit.counts["errors"] == 1
