"""The node refuses an impostor server, a forged or replayed global model, and unsealed runs
its policy forbids; each refusal is signed into its ledger before the server hears of it."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict

from clients.node_config import NODE_FILE
from clients.sealing import PIN_FILE, load_pin
from clients.sim_nodes import pin_server, prepare_sim_nodes
from clients.train_round import run_train_round
from fedmodel.config import ConfigError
from fedmodel.crypto.seal import sign_global, state_dict_to_bytes
from fedmodel.models import build_model
from fedmodel.privacy.ledger import verify_ledger
from fedmodel.scenarios import apply_overrides
from server import wire
from server.sealing import ensure_server_keys
from tests.federation.helpers import small_tabular

RUN_ID = "run-n"


@pytest.fixture
def node(tmp_path):
    """One sealed-run node folder (partition 0) that pins this test's server keys."""
    scenario = apply_overrides(small_tabular("fedavg"), {"security.sealed_updates": True}, "t")
    nodes = tmp_path / "nodes"
    prepare_sim_nodes(nodes, scenario)
    keys = ensure_server_keys(tmp_path / "server-keys")
    pin_server(nodes, keys.exchange_fingerprint, keys.verify_key_path)
    model = build_model(scenario.model, (30,), 2)
    return scenario, nodes, keys, state_dict_to_bytes(model.state_dict())


def request(scenario, nodes, exchange_raw: bytes, blob: bytes, rnd: int = 1) -> RecordDict:
    config = ConfigRecord({
        wire.RUN_ID: RUN_ID, wire.ROUND: rnd, wire.NUM_ROUNDS: 2,
        wire.SCENARIO: scenario.model_dump_json(), wire.SIM_NODES_DIR: str(nodes),
        wire.SERVER_EXCHANGE_KEY: exchange_raw,
    })  # fmt: skip
    return RecordDict({wire.CONFIG: config, wire.SIGNED_GLOBAL: ConfigRecord({wire.BLOB: blob})})


def run_node(content: RecordDict) -> RecordDict:
    context = Context(
        run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 2},
        state=RecordDict(), run_config={},
    )  # fmt: skip
    return run_train_round(content, context)


def refusal_reason(reply: RecordDict) -> str:
    assert wire.REFUSAL in reply and wire.SEALED not in reply, list(reply)
    return str(reply[wire.REFUSAL]["reason"])


def test_wrong_server_key_is_refused_before_training(node):
    scenario, nodes, keys, payload = node
    blob = sign_global(payload, keys.signing, RUN_ID, 1)
    rogue = X25519PrivateKey.generate().public_key().public_bytes_raw()
    reason = refusal_reason(run_node(request(scenario, nodes, rogue, blob)))
    assert "server not trusted" in reason and "wrong-recipient" in reason
    ledger = verify_ledger(nodes / "node-0" / "ledger")
    assert ledger.ok and [e.kind for e in ledger.entries] == ["refusal"]  # nothing was spent


@pytest.mark.parametrize(
    ("forgery", "expected"),
    [("other-signer", "bad-signature"), ("last-round", "wrong-round"), ("other-run", "wrong-run")],
)
def test_forged_or_replayed_global_model_is_refused(node, forgery, expected):
    scenario, nodes, keys, payload = node
    signer, run_id, rnd = keys.signing, RUN_ID, 2
    if forgery == "other-signer":
        signer = Ed25519PrivateKey.generate()
    elif forgery == "last-round":
        rnd = 1
    else:
        run_id = "run-old"
    blob = sign_global(payload, signer, run_id, rnd)
    reply = run_node(request(scenario, nodes, keys.exchange_public_raw, blob, rnd=2))
    assert expected in refusal_reason(reply)


def test_missing_pin_is_a_configuration_error(node):
    scenario, nodes, keys, payload = node
    (nodes / "node-0" / PIN_FILE).unlink()
    blob = sign_global(payload, keys.signing, RUN_ID, 1)
    with pytest.raises(ConfigError, match="no server pin"):
        run_node(request(scenario, nodes, keys.exchange_public_raw, blob))


def test_pin_names_the_run_keys(node):
    _, nodes, keys, _ = node
    pin = load_pin(nodes / "node-1")
    assert pin.exchange_fingerprint == keys.exchange_fingerprint
    assert pin.verify_key.public_bytes_raw() == keys.signing.public_key().public_bytes_raw()


def test_policy_requiring_sealed_updates_refuses_a_plain_run(node):
    scenario, nodes, _, _ = node
    node_file = nodes / "node-0" / NODE_FILE
    text = node_file.read_text().replace(
        "require_sealed_updates = false", "require_sealed_updates = true"
    )
    assert "require_sealed_updates = true" in text
    node_file.write_text(text)
    plain = apply_overrides(scenario, {"security.sealed_updates": False}, "t")
    model = build_model(plain.model, (30,), 2)
    config = ConfigRecord({
        wire.RUN_ID: RUN_ID, wire.ROUND: 1, wire.NUM_ROUNDS: 2,
        wire.SCENARIO: plain.model_dump_json(), wire.SIM_NODES_DIR: str(nodes),
    })  # fmt: skip
    content = RecordDict({wire.CONFIG: config, wire.ARRAYS: ArrayRecord(model.state_dict())})
    assert "requires sealed updates" in refusal_reason(run_node(content))
