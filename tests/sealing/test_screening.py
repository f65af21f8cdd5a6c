"""Every rejection path of the real server screening: real crypto, real Flower messages.

Each test builds the envelope a node sends (sealed, or signed plain), wraps it in a Flower reply
and hands it to ``RecordingStrategy.aggregate_train`` with a real FedAvg inside: what is asserted
is what the run records and what reaches aggregation.
"""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ArrayRecord, ConfigRecord, Message

from fedmodel.config import ConfigError
from fedmodel.crypto.seal import SEAL_FIXED_OVERHEAD, open_request, state_dict_from_bytes
from server import wire
from server.validation import ENVELOPE_SLACK
from tests.sealing.conftest import RUN_ID
from tests.sealing.relay_scan import PAYLOAD_MARKER


def statuses(rows):
    return [(r["node"], r["status"], (r.get("reason") or "").split(":")[0]) for r in rows]


def test_sealed_replies_open_validate_and_aggregate(federation):
    replies = [
        federation.reply(federation.envelope("node-0", 1, value=1.0), "node-0", 1),
        federation.reply(federation.envelope("node-1", 1, value=4.0), "node-1", 2),
    ]
    arrays, rows = federation.screen(1, replies)
    assert statuses(rows) == [("node-0", "ok", ""), ("node-1", "ok", "")]
    assert all(len(r["message_id"]) == 32 for r in rows)
    # every accepted site weighs once: (1 + 4) / 2
    np.testing.assert_allclose(arrays["w"].numpy(), np.full((4, 3), 2.5), rtol=1e-6)


def test_one_node_counts_once_whatever_it_claims(plain_federation):
    """The review's finding 4: two envelopes of one node in one round were both accepted, one
    claiming num-examples = 10^12. Now one counts, with weight 1, and the claim is dropped."""
    fed = plain_federation
    inflated = fed.envelope(
        "node-0", 1, value=9.0, metrics={"num-examples": 10**12, "ledger-count": 1}
    )
    second = fed.envelope(
        "node-0", 1, value=9.0, metrics={"num-examples": 10**12, "ledger-count": 1}
    )
    honest = fed.envelope("node-1", 1, value=1.0, metrics={"num-examples": 10, "ledger-count": 1})
    arrays, rows = fed.screen(
        1,
        [fed.reply(inflated, "node-0", 1), fed.reply(second, "node-0", 1),
         fed.reply(honest, "node-1", 1, dst=2)],
    )  # fmt: skip
    assert statuses(rows) == [
        ("node-0", "ok", ""),
        ("node-0", "rejected", "duplicate"),
        ("node-1", "ok", ""),
    ]
    np.testing.assert_allclose(arrays["w"].numpy(), np.full((4, 3), 5.0), rtol=1e-6)  # (9+1)/2


def test_a_signer_is_bound_to_the_flower_node_it_first_answered_from(plain_federation):
    fed = plain_federation
    fed.screen(1, [fed.reply(fed.envelope("node-0", 1), "node-0", 1, dst=7)])
    _, rows = fed.screen(2, [fed.reply(fed.envelope("node-0", 2), "node-0", 2, dst=8)])
    assert statuses(rows) == [("node-0", "rejected", "malformed")]
    assert "bound to 7" in rows[0]["reason"]


def test_an_unsigned_plain_update_is_rejected(plain_federation):
    fed = plain_federation
    plain = wire.update_record(
        ArrayRecord(fed.state(1.0)),
        {"ledger-count": 1},
        {"name": "node-0", "ledger-hash": "0" * 64},
    )
    _, rows = fed.screen(1, [Message(plain, reply_to=fed.request(1))])
    assert statuses(rows) == [("node-0", "rejected", "malformed")]
    sealed = fed.envelope("node-0", 1, sealed=True)  # not what this run asked for
    _, rows = fed.screen(1, [fed.reply(sealed, "node-0", 1)])
    assert statuses(rows) == [("node-0", "rejected", "malformed")]


def test_an_oversized_reply_is_rejected_before_it_is_read(plain_federation):
    fed = plain_federation
    big = fed.envelope("node-0", 1) + b"\0" * (ENVELOPE_SLACK + (1 << 20))
    _, rows = fed.screen(1, [fed.reply(big, "node-0", 1)])
    assert rows[0]["status"] == "rejected" and "exceeds the model's" in rows[0]["reason"]


def test_auto_norm_bound_rejects_a_boosted_update(plain_federation):
    fed = plain_federation
    replies = [
        fed.reply(fed.envelope(node, 1, value=v), node, 1, dst=i + 1)
        for i, (node, v) in enumerate([("node-0", 1.0), ("node-1", 1.5), ("node-2", 1000.0)])
    ]
    arrays, rows = fed.screen(1, replies)
    assert statuses(rows)[2] == ("node-2", "rejected", "update norm 3873 exceeds bound 58.09")
    np.testing.assert_allclose(arrays["b"].numpy(), 1.25)


def test_the_relay_sees_no_plaintext_weights(federation):
    envelope = federation.envelope("node-0", 1, value=1.2345)
    reply = federation.reply(envelope, "node-0", 1)
    assert not reply.content.array_records and not reply.content.metric_records
    pattern = np.full(3, 1.2345, dtype=np.float32).tobytes()
    assert pattern not in envelope
    # the marker the deployment test scans the SuperLink's database for is in every payload
    payload = wire.update_payload(federation.state(1.2345), {"num-examples": 1}, {"name": "n"})
    assert PAYLOAD_MARKER in payload and pattern in payload
    assert PAYLOAD_MARKER not in envelope
    assert len(envelope) > SEAL_FIXED_OVERHEAD + 15 * 4  # the tensors are in there, encrypted


@pytest.mark.parametrize("where", ["round-field", "header-end", "ciphertext", "tag", "signature"])
def test_any_changed_byte_is_rejected(federation, where):
    envelope = bytearray(federation.envelope("node-0", 1))
    header = 113 + len(RUN_ID) + len("node-0")
    offset = {
        "round-field": 7,
        "header-end": header - 1,
        "ciphertext": header + 40,
        "tag": len(envelope) - 64 - 8,
        "signature": len(envelope) - 5,
    }[where]
    envelope[offset] ^= 0x01
    good = federation.envelope("node-1", 1)
    arrays, rows = federation.screen(
        1, [federation.reply(bytes(envelope), "node-0", 1), federation.reply(good, "node-1", 2)]
    )
    expected = "tampered" if where == "ciphertext" else "bad-signature"
    assert statuses(rows) == [("node-0", "rejected", expected), ("node-1", "ok", "")]
    np.testing.assert_allclose(arrays["b"].numpy(), 1.0)  # only node-1's update got through


def test_replayed_round_and_other_run_are_rejected(federation):
    old = federation.envelope("node-0", 1)
    other_run = federation.envelope("node-1", 2, run_id="run-b")
    federation.screen(1, [federation.reply(old, "node-0", 1)])
    arrays, rows = federation.screen(
        2, [federation.reply(old, "node-0", 2), federation.reply(other_run, "node-1", 2, dst=2)]
    )
    assert statuses(rows) == [
        ("node-0", "rejected", "wrong-round"),
        ("node-1", "rejected", "wrong-run"),
    ]
    assert arrays is None  # nothing valid to aggregate: the global model stays as it was


def test_duplicate_in_one_round_is_rejected(federation):
    envelope = federation.envelope("node-0", 1)
    _, rows = federation.screen(
        1, [federation.reply(envelope, "node-0", 1), federation.reply(envelope, "node-0", 1)]
    )
    assert statuses(rows) == [("node-0", "ok", ""), ("node-0", "rejected", "duplicate")]
    assert "already accepted" in rows[1]["reason"]


def test_unknown_signer_and_impersonation_are_rejected(federation):
    stranger = Ed25519PrivateKey.generate()
    unknown = federation.envelope("node-9", 1, signer=stranger)
    impostor = federation.envelope("node-0", 1, signer=stranger)  # claims node-0, other key
    _, rows = federation.screen(
        1, [federation.reply(unknown, "node-9", 1), federation.reply(impostor, "node-0", 2)]
    )
    assert statuses(rows) == [
        ("node-9", "rejected", "unknown-signer"),
        ("node-0", "rejected", "bad-signature"),
    ]


def test_an_unsealed_update_is_rejected_when_the_run_seals(federation):
    plain = federation.envelope("node-0", 1, sealed=False)
    _, rows = federation.screen(1, [federation.reply(plain, "node-0", 1)])
    assert statuses(rows) == [("node-0", "rejected", "malformed")]


def test_every_request_is_signed_whole_and_nothing_is_sent_plain(federation):
    class ThreeNodes:
        def get_node_ids(self):
            return [1, 2, 3]

    config = ConfigRecord({wire.RUN_ID: RUN_ID, wire.PROXIMAL_MU: 0.5})
    messages = list(
        federation.strategy.configure_train(3, federation.global_arrays, config, ThreeNodes())
    )
    assert len(messages) == 3
    for msg in messages:
        assert list(msg.content) == [wire.SIGNED_REQUEST]  # no unsigned config, no arrays
        request = open_request(
            msg.content[wire.SIGNED_REQUEST][wire.BLOB], federation.keys.signing.public_key()
        )
        assert (request.run_id, request.round) == (RUN_ID, 3)
        assert request.config[wire.PROXIMAL_MU] == 0.5
        assert request.config[wire.SERVER_EXCHANGE_KEY] == federation.keys.exchange_public_raw.hex()
        assert set(state_dict_from_bytes(request.payload)) == {"w", "b"}


def test_forged_refusal_heads_are_rejected(federation, tmp_path):
    """The review's finding 5: a relay edited ledger-count and projected-epsilon of a signed
    refusal, it was accepted, and the report then refused to build."""
    count = _refusal(federation, tmp_path, "node-0", 1)
    count[wire.REFUSAL]["ledger-count"] = 7
    epsilon = _refusal(federation, tmp_path, "node-1", 1)
    epsilon[wire.REFUSAL]["projected-epsilon"] = 0.1
    _, rows = federation.screen(
        1,
        [
            Message(r, reply_to=federation.request(1, dst=i + 1))
            for i, r in enumerate([count, epsilon])
        ],
    )
    assert statuses(rows) == [
        ("node-0", "rejected", "tampered"),
        ("node-1", "rejected", "tampered"),
    ]


def _refusal(federation, tmp_path, node: str, rnd: int, *, run_id: str = RUN_ID, key=None):
    """What a node sends when it declines: its real ledger's signed refusal entry."""
    from fedmodel.privacy.ledger import Ledger

    folder = tmp_path / f"ledger-{len(list(tmp_path.iterdir()))}"  # one per reply
    ledger = Ledger(folder, key or federation.node_keys[node], node=node)
    entry = ledger.append_refusal(run_id, rnd, "epsilon cap reached", 2.5)
    head = ledger.head()
    line = ledger.signed_line(entry.hash)
    return wire.refusal_record(node, "epsilon cap reached", 2.5, head.hash, head.count, line)


def test_a_signed_refusal_is_recorded_and_a_forged_one_rejected(federation, tmp_path):
    """In a sealed run a refusal counts only as the node's own signed ledger entry."""
    genuine = _refusal(federation, tmp_path, "node-0", 1)
    stranger = _refusal(federation, tmp_path, "node-1", 1, key=Ed25519PrivateKey.generate())
    replayed = _refusal(federation, tmp_path, "node-0", 2)  # a real refusal, another round
    other_run = _refusal(federation, tmp_path, "node-1", 1, run_id="run-b")
    edited = _refusal(federation, tmp_path, "node-0", 1)
    edited[wire.REFUSAL]["reason"] = "site policy requires DP-SGD"  # what the relay wants seen
    bare = _refusal(federation, tmp_path, "node-1", 1)
    del bare[wire.REFUSAL][wire.LEDGER_ENTRY]
    replies = [genuine, stranger, replayed, other_run, edited, bare]
    _, rows = federation.screen(
        1, [Message(r, reply_to=federation.request(1, dst=i + 1)) for i, r in enumerate(replies)]
    )
    assert statuses(rows) == [
        ("node-0", "refused", "epsilon cap reached"),
        ("node-1", "rejected", "bad-signature"),
        ("node-0", "rejected", "wrong-round"),
        ("node-1", "rejected", "wrong-run"),
        ("node-0", "rejected", "tampered"),
        ("node-1", "rejected", "malformed"),
    ]
    assert rows[0]["ledger_head"]["hash"] == genuine[wire.REFUSAL]["ledger-hash"]


def test_accepted_ids_survive_a_server_restart(federation, tmp_path):
    """A resumed run repeats its crashed round under the same run id: an update accepted before
    the crash, replayed by the relay afterwards, must not count a second time."""
    from flwr.serverapp.strategy import FedAvg

    from server.recording import RecordingStrategy
    from server.sealing import SignedTraffic

    def traffic():
        signers = federation.traffic.signers
        return SignedTraffic.for_run(federation.keys, signers, RUN_ID, path, sealed=True)

    path = tmp_path / "replay-guard.json"
    federation.strategy = RecordingStrategy(
        FedAvg(min_train_nodes=1, weighted_by_key=wire.UNIT_WEIGHT), traffic=traffic()
    )
    envelope = federation.envelope("node-0", 3)
    _, rows = federation.screen(3, [federation.reply(envelope, "node-0", 3)])
    assert statuses(rows) == [("node-0", "ok", "")] and path.is_file()

    federation.strategy = RecordingStrategy(
        FedAvg(min_train_nodes=1, weighted_by_key=wire.UNIT_WEIGHT), traffic=traffic()
    )
    fresh = federation.envelope("node-0", 3)
    _, rows = federation.screen(
        3, [federation.reply(envelope, "node-0", 3), federation.reply(fresh, "node-0", 3)]
    )
    assert statuses(rows) == [("node-0", "rejected", "duplicate"), ("node-0", "ok", "")]

    path.write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable replay guard"):
        traffic()
