"""The node trusts exactly the server it pinned, and its own policy decides the transport; each
refusal is signed into its ledger before the server hears of it."""

from __future__ import annotations

import tomllib

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedmodel.crypto.keys import fingerprint
from fedmodel.crypto.pin import load_pin, write_pin
from fedmodel.privacy.ledger import verify_ledger
from fedmodel.scenarios import _dump_toml, apply_overrides
from server import wire
from tests.federation.helpers import small_tabular
from tests.nodebench import NodeBench, reply_kind


@pytest.fixture
def bench(tmp_path) -> NodeBench:
    scenario = apply_overrides(small_tabular("fedavg"), {"security.sealed_updates": True}, "t")
    return NodeBench.create(tmp_path, scenario)


def test_a_stale_exchange_pin_is_refused_before_training(bench):
    """The request verifies, but names an exchange key the node did not pin: nothing is sealed
    to it and nothing is trained."""
    folder = bench.nodes / "node-0"
    rogue = fingerprint(X25519PrivateKey.generate().public_key())
    write_pin(folder, rogue, bench.keys.verify_key_path.resolve())
    reply = bench.run(bench.request("run-n", 1))
    assert reply_kind(reply) == "refusal"
    assert "request not verified (wrong-recipient)" in reply[wire.REFUSAL]["reason"]
    ledger = verify_ledger(folder / "ledger")
    assert ledger.ok and [e.kind for e in ledger.entries] == ["policy", "refusal"]


def test_pin_names_the_run_keys(bench):
    pin = load_pin(bench.nodes / "node-1")
    assert pin.exchange_fingerprint == bench.keys.exchange_fingerprint
    assert pin.verify_key.public_bytes_raw() == bench.keys.signing.public_key().public_bytes_raw()


def test_policy_requiring_sealed_updates_refuses_a_plain_run(bench):
    bench.set_node(0, **{"policy.require_sealed_updates": True})
    plain = apply_overrides(bench.scenario, {"security.sealed_updates": False}, "t")
    reply = bench.run(bench.request("run-n", 1, scenario=plain))
    assert "requires sealed updates" in reply[wire.REFUSAL]["reason"]
    assert bench.spends() == []


def test_a_deployed_node_refuses_a_plain_run_unless_its_policy_allows_it(bench):
    """A node deployed over TLS sends its updates through a relay it does not control: with no
    word in its ``[policy]``, it requires sealing; only ``require_sealed_updates = false`` by
    name lets a plain run through. The signed policy entry records the resolved value."""
    node_file = bench.node_file(0)
    data = tomllib.loads(node_file.read_text())
    del data["policy"]["require_sealed_updates"]  # the operator guide's site says nothing
    node_file.write_text(_dump_toml(data))
    bench.set_node(
        0,
        **{
            "deployment.superlink": "fl.example.org:9092",
            "deployment.root_certificates": "pki/ca.crt",
            "deployment.auth_key": "keys/node-0.auth",
        },
    )
    plain = apply_overrides(bench.scenario, {"security.sealed_updates": False}, "t")
    reply = bench.run(bench.request("run-n", 1, scenario=plain))
    assert "requires sealed updates" in reply[wire.REFUSAL]["reason"]
    assert bench.spends() == []
    ledger = verify_ledger(bench.nodes / "node-0" / "ledger")
    assert ledger.entries[0].kind == "policy"
    assert ledger.entries[0].policy["require_sealed_updates"] is True

    bench.set_node(0, **{"policy.require_sealed_updates": False})
    reply = bench.run(bench.request("run-m", 1, scenario=plain))
    assert reply_kind(reply) == "update"
