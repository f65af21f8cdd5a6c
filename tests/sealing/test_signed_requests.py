"""A relay cannot change what a node is asked to do, and cannot make it answer twice.

The security review edited the scenario JSON inside a sealed run's request: it switched sealing
off (the node then replied with plaintext weights), set ``poisson_sampling = false`` and
``epochs = 5`` (the node trained 20 steps instead of 4 and spent 8.1 instead of 4.2), and set
the planned rounds to 1 (so calibration targeted one round); re-delivering a request made the
node train again. Each test here is that attack against the real ClientApp round, on a request
the server's own code signed.
"""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedmodel.crypto.pin import PIN_FILE
from fedmodel.crypto.seal import sign_request
from fedmodel.scenarios import apply_overrides
from server import wire
from tests.federation.helpers import small_tabular
from tests.nodebench import NodeBench, blob_of, relay_edit, reply_kind, with_blob


@pytest.fixture
def bench(tmp_path) -> NodeBench:
    scenario = apply_overrides(
        small_tabular("fedavg"),
        {"security.sealed_updates": True, "federation.rounds": 4, "dp.target_epsilon": 4.0},
        "t",
        clear=("dp.noise_multiplier",),
    )
    return NodeBench.create(tmp_path, scenario)


def _scenario_edit(section: str, key: str, value):
    def edit(config: dict) -> dict:
        scenario = json.loads(config[wire.SCENARIO])
        scenario[section][key] = value
        return {**config, wire.SCENARIO: json.dumps(scenario)}

    return edit


RELAY_EDITS = {
    "sealing-off": _scenario_edit("security", "sealed_updates", False),
    "fixed-batches": _scenario_edit("dp", "poisson_sampling", False),
    "more-epochs": _scenario_edit("train", "epochs", 5),
    "one-planned-round": lambda c: {**c, wire.NUM_ROUNDS: 1},
    "fedprox-mu": lambda c: {**c, wire.PROXIMAL_MU: 10.0},
}


@pytest.mark.parametrize("attack", sorted(RELAY_EDITS))
def test_relay_edit_is_refused_and_nothing_is_spent(bench, attack):
    genuine = bench.request("run-1", 1)
    forged = with_blob(genuine, relay_edit(blob_of(genuine), RELAY_EDITS[attack]))
    reply = bench.run(forged)
    assert reply_kind(reply) == "refusal", list(reply)
    assert "request not verified (bad-signature)" in reply[wire.REFUSAL]["reason"]
    assert bench.spends() == []  # nothing trained, nothing spent
    # the genuine request still trains afterwards: the refusal cost the node nothing
    assert reply_kind(bench.run(genuine)) == "update"
    assert len(bench.spends()) == 1


def test_a_request_signed_by_another_key_is_refused(bench):
    config = bench.signed_config("run-1", 1)
    blob = sign_request(bench.model_payload(), Ed25519PrivateKey.generate(), config)
    reply = bench.run(with_blob(bench.request("run-1", 1), blob))
    assert "bad-signature" in reply[wire.REFUSAL]["reason"]
    assert bench.spends() == []


def test_a_swapped_global_model_is_refused(bench):
    genuine = blob_of(bench.request("run-1", 1))
    other = bench.model_payload()  # fresh random weights: the relay's own model
    header_end = len(genuine) - 64 - len(other)
    forged = genuine[:header_end] + other + genuine[-64:]
    reply = bench.run(with_blob(bench.request("run-1", 1), forged))
    assert "request not verified (tampered)" in reply[wire.REFUSAL]["reason"]
    assert bench.spends() == []


def test_a_replayed_request_is_refused(bench):
    request = bench.request("run-1", 1)
    assert reply_kind(bench.run(request)) == "update"
    again = bench.run(request)
    assert reply_kind(again) == "refusal"
    assert "already spent for round 1 of run run-1" in again[wire.REFUSAL]["reason"]
    assert len(bench.spends()) == 1


def test_a_round_past_the_signed_plan_is_refused(bench):
    reply = bench.run(bench.request("run-1", 5))  # the plan has 4 rounds
    assert "past the run's plan of 4 rounds" in reply[wire.REFUSAL]["reason"]
    assert bench.spends() == []


def test_a_node_without_a_pin_refuses_and_says_how_to_pin(bench):
    (bench.nodes / "node-0" / PIN_FILE).unlink()
    reply = bench.run(bench.request("run-1", 1))
    reason = reply[wire.REFUSAL]["reason"]
    assert "no server pin" in reason and "fedmodel node pin" in reason
    assert str(bench.nodes) not in reason  # no local path crosses the relay
    assert bench.spends() == []


def test_a_sealed_request_is_answered_sealed_to_the_pinned_key(bench):
    reply = bench.run(bench.request("run-1", 1))
    envelope = reply[wire.UPDATE][wire.ENVELOPE]
    assert envelope[:4] == b"FMSU"
    plain = apply_overrides(bench.scenario, {"security.sealed_updates": False}, "t")
    reply = bench.run(bench.request("run-2", 1, scenario=plain))
    assert reply[wire.UPDATE][wire.ENVELOPE][:4] == b"FMSP"  # signed, not sealed, as signed for


def test_an_evaluation_request_is_never_answered_as_training(bench):
    reply = bench.run(bench.request("run-1", 1, task="evaluate"))
    assert reply[wire.REFUSAL]["reason"] == "request signed for another task than 'train'"
    assert bench.spends() == []
