"""Every way a sealed or signed update, or a signed request, can be forged, replayed or misrouted
fails.

The relay (SuperLink) is the adversary here: it can change, drop, reorder and replay any byte it
carries, and it can read everything not sealed. Each test names the attack and the ``reason`` the
server (or node) must report, so operators and the run's metrics can tell them apart.
"""

from __future__ import annotations

import struct

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedmodel.crypto.keys import fingerprint
from fedmodel.crypto.seal import (
    PLAIN_FIXED_OVERHEAD,
    REQUEST_FIXED_OVERHEAD,
    SEAL_FIXED_OVERHEAD,
    OpenedUpdate,
    ReplayGuard,
    SealError,
    load_server_public,
    open_request,
    open_signed_update,
    open_update,
    peek_request,
    seal_update,
    sign_request,
    sign_update,
    state_dict_from_bytes,
    state_dict_to_bytes,
)
from fedmodel.errors import FedmodelError

RUN, ROUND, NODE = "run-42", 3, "node-0"
PAYLOAD = b"MODEL-UPDATE:" + bytes(range(256)) * 2
TAG_LEN, SIG_LEN = 16, 64
SEAL_OVERHEAD = SEAL_FIXED_OVERHEAD + len(RUN) + len(NODE)


@pytest.fixture(scope="module")
def server() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


@pytest.fixture(scope="module")
def node_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def signers(node_key: Ed25519PrivateKey) -> dict:
    return {NODE: node_key.public_key(), "node-1": Ed25519PrivateKey.generate().public_key()}


@pytest.fixture
def envelope(server: X25519PrivateKey, node_key: Ed25519PrivateKey) -> bytes:
    return _seal(server, node_key)


def _seal(server, signer, *, run=RUN, round=ROUND, node=NODE, payload=PAYLOAD) -> bytes:
    return seal_update(
        payload,
        server_public=server.public_key(),
        signer=signer,
        run_id=run,
        round=round,
        node_id=node,
    )


def _open(envelope, server, signers, *, run=RUN, round=ROUND, seen=None) -> OpenedUpdate:
    return open_update(
        envelope,
        server_private=server,
        known_signers=signers,
        run_id=run,
        round=round,
        seen=seen if seen is not None else ReplayGuard(),
    )


def _reason(fn, *args, **kwargs) -> str:
    with pytest.raises(SealError) as info:
        fn(*args, **kwargs)
    return info.value.reason


def _flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


def _header_len(envelope: bytes) -> int:
    return len(envelope) - len(PAYLOAD) - TAG_LEN - SIG_LEN


# --- the honest path ---------------------------------------------------------------------------


def test_round_trip(envelope, server, signers) -> None:
    opened = _open(envelope, server, signers)
    assert (opened.node_id, opened.payload) == (NODE, PAYLOAD)
    assert len(opened.message_id) == 32  # 128-bit random id, hex


def test_relay_sees_no_plaintext_and_no_inflation(envelope) -> None:
    assert b"MODEL-UPDATE" not in envelope
    assert bytes(range(64)) not in envelope
    assert len(envelope) - len(PAYLOAD) == SEAL_OVERHEAD == 205


def test_every_seal_is_fresh(server, node_key) -> None:
    a, b = _seal(server, node_key), _seal(server, node_key)
    assert a != b and len(a) == len(b)


def test_real_state_dict_round_trip(server, node_key, signers) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3),
        torch.nn.GroupNorm(2, 4),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 2),
    )
    state = model.state_dict()
    state["steps"] = torch.tensor([7, 8], dtype=torch.int64)
    payload = state_dict_to_bytes(state)
    opened = _open(_seal(server, node_key, payload=payload), server, signers)
    restored = state_dict_from_bytes(opened.payload)
    assert restored.keys() == state.keys()
    for name, tensor in state.items():
        assert torch.equal(restored[name], tensor) and restored[name].dtype == tensor.dtype


def test_large_payload_overhead_is_constant(server, node_key, signers) -> None:
    payload = bytes(1_000_003)
    env = _seal(server, node_key, payload=payload)
    assert len(env) - len(payload) == SEAL_OVERHEAD
    assert _open(env, server, signers).payload == payload


# --- tampering: a changed byte anywhere is rejected --------------------------------------------


def test_changed_byte_anywhere_is_rejected(envelope, server, signers) -> None:
    allowed = {"malformed", "unknown-signer", "bad-signature", "tampered"}
    for i in range(len(envelope)):
        reason = _reason(_open, _flip(envelope, i), server, signers)
        assert reason in allowed, (i, reason)


def test_changed_header_byte_breaks_signature(envelope, server, signers) -> None:
    # byte 5..8 is the round; 9..24 the message id; the signature covers them all
    for i in (5, 8, 9, 40, 80, _header_len(envelope) - 1):
        assert _reason(_open, _flip(envelope, i), server, signers) == "bad-signature", i


def test_changed_ciphertext_byte_is_tampered(envelope, server, signers) -> None:
    start = _header_len(envelope)
    for i in (start, start + len(PAYLOAD) // 2, start + len(PAYLOAD) - 1):
        assert _reason(_open, _flip(envelope, i), server, signers) == "tampered", i


def test_changed_tag_or_signature_byte_breaks_signature(envelope, server, signers) -> None:
    for i in (len(envelope) - SIG_LEN - TAG_LEN, len(envelope) - SIG_LEN, len(envelope) - 1):
        assert _reason(_open, _flip(envelope, i), server, signers) == "bad-signature", i


def test_tampered_copy_does_not_burn_the_message_id(envelope, server, signers) -> None:
    seen = ReplayGuard()
    bad = _flip(envelope, _header_len(envelope) + 1)
    assert _reason(_open, bad, server, signers, seen=seen) == "tampered"
    assert _open(envelope, server, signers, seen=seen).payload == PAYLOAD


@pytest.mark.parametrize("cut", [0, 1, 4, 20, 113, -65, -64, -1])
def test_truncated_envelope_is_malformed(envelope, server, signers, cut) -> None:
    assert _reason(_open, envelope[:cut], server, signers) == "malformed"


def test_garbage_and_appended_bytes_are_malformed(envelope, server, signers) -> None:
    assert _reason(_open, b"\x00" * 300, server, signers) == "malformed"
    assert _reason(_open, envelope + b"\x00", server, signers) == "malformed"


# --- replay and misrouting ---------------------------------------------------------------------


def test_replayed_round_is_wrong_round(envelope, server, signers) -> None:
    assert _reason(_open, envelope, server, signers, round=ROUND + 1) == "wrong-round"


def test_duplicate_in_same_round(envelope, server, signers) -> None:
    seen = ReplayGuard()
    _open(envelope, server, signers, seen=seen)
    assert _reason(_open, envelope, server, signers, seen=seen) == "duplicate"


def test_replay_guard_survives_persistence(envelope, server, signers) -> None:
    seen = ReplayGuard()
    _open(envelope, server, signers, seen=seen)
    restored = ReplayGuard.from_dict(seen.to_dict())
    assert _reason(_open, envelope, server, signers, seen=restored) == "duplicate"


def test_replay_guard_forgets_old_rounds_only(server, node_key, signers) -> None:
    seen = ReplayGuard()
    old, new = _seal(server, node_key, round=1), _seal(server, node_key, round=2)
    _open(old, server, signers, round=1, seen=seen)
    _open(new, server, signers, round=2, seen=seen)
    seen.forget_before(RUN, 2)
    assert list(seen.to_dict()) == [f"{RUN}:2"]
    assert _reason(_open, new, server, signers, round=2, seen=seen) == "duplicate"


def test_wrong_run(envelope, server, signers) -> None:
    assert _reason(_open, envelope, server, signers, run="run-43") == "wrong-run"


def test_int_and_str_run_ids_agree(server, node_key, signers) -> None:
    env = _seal(server, node_key, run=1234567890123)
    assert _open(env, server, signers, run="1234567890123").node_id == NODE


def test_unknown_signer(server, signers) -> None:
    stranger = Ed25519PrivateKey.generate()
    env = _seal(server, stranger, node="node-9")
    assert _reason(_open, env, server, signers) == "unknown-signer"


def test_right_node_id_wrong_signer_key(server, signers) -> None:
    impostor = Ed25519PrivateKey.generate()
    env = _seal(server, impostor, node=NODE)
    assert _reason(_open, env, server, signers) == "bad-signature"


def test_other_registered_node_cannot_claim_my_id(server, signers) -> None:
    other = Ed25519PrivateKey.generate()
    env = _seal(server, other, node=NODE)
    assert _reason(_open, env, server, {**signers, "node-1": other.public_key()}) == "bad-signature"


def test_sealed_to_another_server_is_wrong_recipient(node_key, server, signers) -> None:
    elsewhere = X25519PrivateKey.generate()
    env = _seal(elsewhere, node_key)
    assert _reason(_open, env, server, signers) == "wrong-recipient"


# --- server key pinning ------------------------------------------------------------------------


def test_pinned_server_key(server) -> None:
    raw = server.public_key().public_bytes_raw()
    pin = fingerprint(server.public_key())
    assert load_server_public(raw, pin).public_bytes_raw() == raw
    other_pin = fingerprint(X25519PrivateKey.generate().public_key())
    assert _reason(load_server_public, raw, other_pin) == "wrong-recipient"
    assert _reason(load_server_public, raw[:31], pin) == "malformed"


# --- the server-signed request ----------------------------------------------------------------

CONFIG = {"run-id": RUN, "server-round": ROUND, "scenario": '{"dp": {"noise": 1.0}}', "mu": 0.1}


@pytest.fixture(scope="module")
def server_signing() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def blob(server_signing) -> bytes:
    return sign_request(PAYLOAD, server_signing, CONFIG)


def test_request_round_trip(blob, server_signing) -> None:
    request = open_request(blob, server_signing.public_key())
    assert (request.run_id, request.round, request.payload) == (RUN, ROUND, PAYLOAD)
    assert request.config == CONFIG
    config_len = len(blob) - len(PAYLOAD) - REQUEST_FIXED_OVERHEAD
    assert config_len == len(
        b'{"mu":0.1,"run-id":"run-42","scenario":"{\\"dp\\": {\\"noise\\": 1.0}}","server-round":3}'
    )
    assert peek_request(blob) == (RUN, ROUND)


def test_request_wrong_server_key(blob) -> None:
    rogue = Ed25519PrivateKey.generate()
    assert _reason(open_request, blob, rogue.public_key()) == "bad-signature"


def test_request_changed_byte_anywhere(blob, server_signing) -> None:
    """Config, model, lengths or signature: every single changed byte is caught."""
    public = server_signing.public_key()
    payload_start = len(blob) - len(PAYLOAD) - SIG_LEN
    reasons = {i: _reason(open_request, _flip(blob, i), public) for i in range(len(blob))}
    assert set(reasons.values()) <= {"malformed", "bad-signature", "tampered"}
    assert all(reasons[i] in ("malformed", "bad-signature") for i in range(payload_start))
    assert reasons[payload_start] == reasons[len(blob) - SIG_LEN - 1] == "tampered"
    assert reasons[len(blob) - 1] == "bad-signature"


def test_request_needs_run_and_round(server_signing) -> None:
    assert _reason(sign_request, PAYLOAD, server_signing, {"run-id": RUN}) == "malformed"
    bad = {**CONFIG, "x": float("nan")}
    assert _reason(sign_request, PAYLOAD, server_signing, bad) == "malformed"


# --- signed plain updates (runs that do not seal) ---------------------------------------------


def test_signed_update_round_trip_and_its_checks(node_key, signers) -> None:
    envelope = sign_update(PAYLOAD, signer=node_key, run_id=RUN, round=ROUND, node_id=NODE)
    assert len(envelope) - len(PAYLOAD) == PLAIN_FIXED_OVERHEAD + len(RUN) + len(NODE)
    guard = ReplayGuard()
    opened = open_signed_update(
        envelope, known_signers=signers, run_id=RUN, round=ROUND, seen=guard
    )
    assert (opened.node_id, opened.payload) == (NODE, PAYLOAD)
    again = {"known_signers": signers, "run_id": RUN, "round": ROUND, "seen": guard}
    assert _reason(open_signed_update, envelope, **again) == "duplicate"
    fresh = {**again, "seen": ReplayGuard()}
    assert _reason(open_signed_update, envelope, **{**fresh, "round": ROUND + 1}) == "wrong-round"
    assert _reason(open_signed_update, _flip(envelope, 50), **fresh) == "bad-signature"
    assert _reason(open_signed_update, _flip(envelope, len(envelope) - 70), **fresh) == "tampered"
    impostor = sign_update(
        PAYLOAD, signer=Ed25519PrivateKey.generate(), run_id=RUN, round=ROUND, node_id=NODE
    )
    assert _reason(open_signed_update, impostor, **fresh) == "bad-signature"


def test_formats_are_not_interchangeable(blob, envelope, server, signers, server_signing) -> None:
    assert _reason(_open, blob, server, signers) == "malformed"
    assert _reason(open_request, envelope, server_signing.public_key()) == "malformed"
    fresh = {"known_signers": signers, "run_id": RUN, "round": ROUND, "seen": ReplayGuard()}
    assert _reason(open_signed_update, envelope, **fresh) == "malformed"


# --- errors ------------------------------------------------------------------------------------


def test_seal_error_is_a_one_line_fedmodel_error(envelope, server, signers) -> None:
    with pytest.raises(SealError) as info:
        _open(envelope, server, signers, round=9)
    assert isinstance(info.value, FedmodelError) and info.value.exit_code == 2
    assert "\n" not in str(info.value) and "wrong-round" in str(info.value)


def test_bad_seal_arguments(server, node_key) -> None:
    assert _reason(_seal, server, node_key, round=-1) == "malformed"
    assert _reason(_seal, server, node_key, node="") == "malformed"
    assert _reason(state_dict_from_bytes, b"not safetensors") == "malformed"


def test_oversized_payload_is_refused_before_allocating(server, node_key) -> None:
    huge = memoryview(bytes(2**31))  # calloc'd: untouched pages cost no memory
    assert _reason(_seal, server, node_key, payload=huge) == "malformed"


def test_documented_header_layout(envelope, server) -> None:
    """Pins docs/security.md: magic, version, round (u32 BE), message id, recipient fingerprint."""
    assert envelope[:4] == b"FMSU" and envelope[4] == 1
    assert struct.unpack(">I", envelope[5:9])[0] == ROUND
    assert envelope[25:57].hex() == fingerprint(server.public_key())
    assert envelope[57:89] != server.public_key().public_bytes_raw()  # ephemeral, not static
