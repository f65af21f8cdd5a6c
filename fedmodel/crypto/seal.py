"""Signed messages both ways: requests (server -> nodes), updates (node -> server), sealed or not.

The Flower relay (SuperLink) stores and forwards every message and may change any of them.

* **Requests** are signed whole by the server (:func:`sign_request`): every config value a node
  reads (scenario, planned rounds, FedProx mu, the server's exchange key) and the SHA-256 of the
  global model. A node verifies against its pinned key before it reads anything
  (:func:`open_request`), so a relay can neither push its own model nor switch sealing off,
  change epochs or the sampling scheme, or shorten the plan a node calibrates its noise for.
* **Sealed updates** (:func:`seal_update`) are readable only by the ServerApp's X25519 key and
  provably come from one registered node, for one run and one round, once:

  * confidentiality: ephemeral X25519 with the server's pinned key, HKDF-SHA256, AES-256-GCM;
  * origin: the node's Ed25519 key signs the header (which carries the ephemeral key) and tag;
  * freshness: run id, round and a random 128-bit message id sit in the signed header; the
    server rejects other runs/rounds and remembers accepted ids per round (:class:`ReplayGuard`).
* **Signed plain updates** (:func:`sign_update`): the same origin and freshness, no
  confidentiality, for runs that do not seal.

The global model travels in plaintext (every node receives the same bytes, so there is nothing to
hide from the relay that the nodes will not see). See docs/security.md for the threat model and
the argument for signing the GCM tag instead of a hash of the ciphertext.

Only ``cryptography`` primitives are used; payloads are never base64-encoded or copied more than
the cipher itself requires, because a MiniLM update is ~91 MB.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedmodel.crypto.keys import fingerprint
from fedmodel.errors import FedmodelError

if TYPE_CHECKING:
    import torch

SealReason = Literal[
    "bad-signature",
    "unknown-signer",
    "wrong-run",
    "wrong-round",
    "duplicate",
    "tampered",
    "wrong-recipient",
    "malformed",
    "ledger-history",  # the ledger entries a reply carries do not extend the server's copy
]

# Domain-separation labels: the node's Ed25519 key may also sign ledger entries, so a signature
# made here must never verify as anything else (and vice versa).
_SEAL_SIG_LABEL = b"fedmodel/sealed-update/v1/signature\x00"
_SEAL_KDF_LABEL = b"fedmodel/sealed-update/v1/aes-256-gcm\x00"
_REQUEST_SIG_LABEL = b"fedmodel/request/v1/signature\x00"
_PLAIN_SIG_LABEL = b"fedmodel/signed-update/v1/signature\x00"

_VERSION = 1
_SEAL_MAGIC = b"FMSU"
_REQUEST_MAGIC = b"FMRQ"
_PLAIN_MAGIC = b"FMSP"
_RUN_ID = "run-id"
_RUN_ROUND = "server-round"
# magic, version, round, message id, recipient fingerprint, ephemeral key, nonce, ct len, id lens
_SEAL_FIXED = struct.Struct(">4sBI16s32s32s12sQHH")
# magic, version, round, SHA-256 of payload, payload len, config JSON len
_REQUEST_FIXED = struct.Struct(">4sBI32sQI")
# magic, version, round, message id, SHA-256 of payload, payload len, run id len, node id len
_PLAIN_FIXED = struct.Struct(">4sBI16s32sQHH")
_TAG_LEN = 16
_SIG_LEN = 64
_MAX_ROUND = 2**32 - 1
_MAX_ID_LEN = 2**16 - 1
_MAX_PAYLOAD = 2**31 - 1  # cryptography's one-shot AEAD limit; checked before allocating

SEAL_FIXED_OVERHEAD = _SEAL_FIXED.size + _TAG_LEN + _SIG_LEN
"""Envelope bytes beyond the payload, plus the UTF-8 run id and node id (193 + ids)."""
REQUEST_FIXED_OVERHEAD = _REQUEST_FIXED.size + _SIG_LEN
"""Signed-request bytes beyond the payload, plus the config JSON (117 + config)."""
PLAIN_FIXED_OVERHEAD = _PLAIN_FIXED.size + _SIG_LEN
"""Signed plain update bytes beyond the payload, plus the two ids (137 + ids)."""


class SealError(FedmodelError):
    """A sealed update or signed global model was rejected; ``reason`` says why, for metrics."""

    def __init__(self, reason: SealReason, detail: str) -> None:
        super().__init__(f"sealed message rejected ({reason}): {detail}")
        self.reason: SealReason = reason
        self.detail = detail


@dataclass(frozen=True)
class OpenedUpdate:
    """A verified, decrypted update: who sent it, what it says, and its (hex) message id."""

    node_id: str
    payload: bytes
    message_id: str


@dataclass
class ReplayGuard:
    """Message ids already accepted, per ``"run:round"``.

    Plain data so the ServerApp can keep it in its Context state or a JSON file: a restarted
    server must still refuse an update it already aggregated.
    """

    accepted: dict[str, set[str]] = field(default_factory=dict)

    def check(self, run_id: str | int, round: int, message_id: str) -> None:
        if message_id in self.accepted.get(_round_key(run_id, round), ()):
            raise SealError("duplicate", f"message {message_id} already accepted this round")

    def record(self, run_id: str | int, round: int, message_id: str) -> None:
        self.accepted.setdefault(_round_key(run_id, round), set()).add(message_id)

    def forget_before(self, run_id: str | int, round: int) -> None:
        """Drop ids of earlier rounds: open_update rejects those rounds before asking the guard."""
        for key in list(self.accepted):
            key_run, key_round = key.rsplit(":", 1)
            if key_run == str(run_id) and int(key_round) < round:
                del self.accepted[key]

    def to_dict(self) -> dict[str, list[str]]:
        return {key: sorted(ids) for key, ids in self.accepted.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, list[str]]) -> ReplayGuard:
        return cls({key: set(ids) for key, ids in data.items()})


@dataclass(frozen=True)
class _SealHeader:
    """The signed, authenticated (AAD) part of a sealed update; see docs/security.md."""

    round: int
    message_id: bytes
    recipient: bytes
    ephemeral: bytes
    nonce: bytes
    ciphertext_len: int
    run_id: str
    node_id: str

    def pack(self) -> bytes:
        run, node = _encode_id(self.run_id, "run id"), _encode_id(self.node_id, "node id")
        fixed = _SEAL_FIXED.pack(
            _SEAL_MAGIC,
            _VERSION,
            self.round,
            self.message_id,
            self.recipient,
            self.ephemeral,
            self.nonce,
            self.ciphertext_len,
            len(run),
            len(node),
        )
        return fixed + run + node

    @classmethod
    def unpack(cls, envelope: memoryview) -> tuple[_SealHeader, int]:
        """Parse and size-check; returns the header and its length in bytes."""
        fixed = _unpack_fixed(_SEAL_FIXED, _SEAL_MAGIC, envelope)
        round_, message_id, recipient, ephemeral, nonce, ct_len, run_len, node_len = fixed[2:]
        header_len = _SEAL_FIXED.size + run_len + node_len
        _expect_len(envelope, header_len + ct_len + _TAG_LEN + _SIG_LEN)
        ids = envelope[_SEAL_FIXED.size : header_len]
        run_id, node_id = _decode_id(ids[:run_len]), _decode_id(ids[run_len:])
        header = cls(round_, message_id, recipient, ephemeral, nonce, ct_len, run_id, node_id)
        return header, header_len


# --- sealed updates (node -> server) -----------------------------------------------------------


def seal_update(
    payload: bytes,
    *,
    server_public: X25519PublicKey,
    signer: Ed25519PrivateKey,
    run_id: str | int,
    round: int,
    node_id: str,
) -> bytes:
    """Encrypt ``payload`` to the server and sign it as ``node_id`` for this run and round.

    Envelope: header (AAD) || ciphertext || GCM tag || Ed25519 signature; the ciphertext is
    written straight into the returned bytes, so sealing costs one pass like a bare encrypt.
    """
    _check_round(round)
    if len(payload) > _MAX_PAYLOAD:
        raise SealError("malformed", f"payload over {_MAX_PAYLOAD} bytes (one AES-GCM message)")
    ephemeral = X25519PrivateKey.generate()
    ephemeral_raw = ephemeral.public_key().public_bytes_raw()
    nonce = os.urandom(12)  # the key is single-use, so a random nonce cannot repeat under it
    header = _SealHeader(
        round=round,
        message_id=os.urandom(16),
        recipient=_fingerprint_raw(server_public),
        ephemeral=ephemeral_raw,
        nonce=nonce,
        ciphertext_len=len(payload),
        run_id=str(run_id),
        node_id=node_id,
    ).pack()
    cipher = _cipher(_exchange(ephemeral, server_public), ephemeral_raw, server_public)
    ct_end = len(header) + len(payload)

    def fill(view: memoryview) -> None:
        view[: len(header)] = header
        cipher.encrypt_into(nonce, payload, header, view[len(header) : ct_end + _TAG_LEN])
        tag = view[ct_end : ct_end + _TAG_LEN].tobytes()
        view[ct_end + _TAG_LEN :] = signer.sign(_SEAL_SIG_LABEL + header + tag)

    return _build(ct_end + _TAG_LEN + _SIG_LEN, fill)


def open_update(
    envelope: bytes,
    *,
    server_private: X25519PrivateKey,
    known_signers: Mapping[str, Ed25519PublicKey],
    run_id: str | int,
    round: int,
    seen: ReplayGuard,
) -> OpenedUpdate:
    """Verify, check freshness, then decrypt; raises :class:`SealError` with the first failure.

    Cheap checks run before the decryption pass, and the message id is recorded only after
    decryption succeeds, so a corrupted copy cannot burn the id of the genuine one.
    """
    view = memoryview(envelope)
    header, header_len = _SealHeader.unpack(view)
    ct_end = header_len + header.ciphertext_len
    header_bytes = view[:header_len].tobytes()
    tag = view[ct_end : ct_end + _TAG_LEN].tobytes()
    signed = _SEAL_SIG_LABEL + header_bytes + tag
    _verify(_signer_key(known_signers, header.node_id), view[ct_end + _TAG_LEN :], signed)
    server_public = server_private.public_key()
    if not hmac.compare_digest(header.recipient, _fingerprint_raw(server_public)):
        raise SealError("wrong-recipient", "sealed to a different server key")
    _check_context(header.run_id, header.round, run_id, round)
    message_id = header.message_id.hex()
    seen.check(run_id, round, message_id)
    cipher = _cipher(
        _exchange(server_private, _x25519_public(header.ephemeral)), header.ephemeral, server_public
    )
    try:
        payload = cipher.decrypt(header.nonce, view[header_len : ct_end + _TAG_LEN], header_bytes)
    except InvalidTag:
        raise SealError("tampered", f"ciphertext from {header.node_id} fails its GCM tag") from None
    seen.record(run_id, round, message_id)
    return OpenedUpdate(node_id=header.node_id, payload=payload, message_id=message_id)


def load_server_public(raw: bytes, pinned_fingerprint: str) -> X25519PublicKey:
    """Accept a server key only if it matches the fingerprint the node pinned.

    The fingerprint is :func:`fedmodel.crypto.keys.fingerprint` (hex SHA-256 of the key's DER
    SubjectPublicKeyInfo; ':' separators allowed), the same value every envelope names as its
    recipient, so one string identifies the server key everywhere.
    """
    key = _x25519_public(raw)
    expected = pinned_fingerprint.replace(":", "").strip().lower()
    if not hmac.compare_digest(fingerprint(key), expected):
        raise SealError("wrong-recipient", "server key does not match the pinned fingerprint")
    return key


# --- signed requests (server -> nodes) ---------------------------------------------------------


@dataclass(frozen=True)
class SignedRequest:
    """A training request the pinned server signed: every config value, and the global model."""

    run_id: str
    round: int
    config: dict[str, Any]
    payload: bytes


def sign_request(
    payload: bytes,
    server_signing_key: Ed25519PrivateKey,
    config: Mapping[str, Any],
    *,
    payload_sha256: bytes | None = None,
) -> bytes:
    """Wrap the whole request: header (canonical JSON config, SHA-256 of the model) || payload ||
    Ed25519 signature over the header.

    ``config`` must hold ``run-id`` (str) and ``server-round`` (int), plus every value the node
    will read (scenario, planned rounds, FedProx mu, the server's exchange key as hex, ...): a
    node reads nothing a relay could have changed, because it reads only this. Values must be
    JSON (str, int, float, bool, lists, objects). ``payload_sha256``: the payload's digest when
    the caller signs the same model for many nodes (one hash pass, not one per node).
    """
    round_ = config.get(_RUN_ROUND)
    if not isinstance(config.get(_RUN_ID), str) or not isinstance(round_, int):
        raise SealError("malformed", f"a request config needs {_RUN_ID} (str), {_RUN_ROUND} (int)")
    _check_round(round_)
    try:
        text = json.dumps(dict(config), sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise SealError("malformed", f"request config is not JSON: {err}") from None
    body = text.encode("utf-8")
    digest = payload_sha256 or hashlib.sha256(payload).digest()
    header = (
        _REQUEST_FIXED.pack(_REQUEST_MAGIC, _VERSION, round_, digest, len(payload), len(body))
        + body
    )
    signature = server_signing_key.sign(_REQUEST_SIG_LABEL + header)
    return b"".join((header, payload, signature))


def open_request(blob: bytes, server_verify_key: Ed25519PublicKey) -> SignedRequest:
    """The request, if the pinned server signed it; raises :class:`SealError` otherwise.

    The signature is checked before a byte of the config is parsed; freshness (run, round, a
    replay) is the node's ledger's business (:mod:`fedmodel.privacy.spend`).
    """
    view = memoryview(blob)
    fixed = _unpack_fixed(_REQUEST_FIXED, _REQUEST_MAGIC, view)
    header_round, digest, payload_len, config_len = fixed[2:]
    header_len = _REQUEST_FIXED.size + config_len
    _expect_len(view, header_len + payload_len + _SIG_LEN)
    _verify(server_verify_key, view[-_SIG_LEN:], _REQUEST_SIG_LABEL + view[:header_len].tobytes())
    try:
        config = json.loads(view[_REQUEST_FIXED.size : header_len].tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise SealError("malformed", "signed request config is not JSON") from None
    run_id, round_ = config.get(_RUN_ID), config.get(_RUN_ROUND)
    if not isinstance(config, dict) or not isinstance(run_id, str) or round_ != header_round:
        raise SealError("malformed", "signed request config lacks its run id or round")
    payload = view[header_len : header_len + payload_len]
    if not hmac.compare_digest(hashlib.sha256(payload).digest(), digest):
        raise SealError("tampered", "global model bytes do not match the signed digest")
    return SignedRequest(run_id, header_round, config, payload.tobytes())


def peek_request(blob: bytes) -> tuple[str, int]:
    """The run id and round a request's header *claims*, without verifying anything.

    Only for labelling the refusal of a request that failed verification; never act on it.
    """
    view = memoryview(blob)
    fixed = _unpack_fixed(_REQUEST_FIXED, _REQUEST_MAGIC, view)
    header_round, config_len = fixed[2], fixed[5]
    raw = view[_REQUEST_FIXED.size : _REQUEST_FIXED.size + min(config_len, 1 << 20)].tobytes()
    try:
        run_id = json.loads(raw.decode("utf-8")).get(_RUN_ID)
    except (UnicodeDecodeError, ValueError, AttributeError):
        run_id = None
    return (run_id[:64] if isinstance(run_id, str) and run_id else "unknown"), int(header_round)


# --- signed plain updates (node -> server, when the run does not seal) -------------------------


def sign_update(
    payload: bytes,
    *,
    signer: Ed25519PrivateKey,
    run_id: str | int,
    round: int,
    node_id: str,
) -> bytes:
    """An unencrypted update, signed as ``node_id`` for this run and round: the relay can read it
    (the run chose not to seal), but cannot change it or pass it off as another node's."""
    _check_round(round)
    run, node = _encode_id(str(run_id), "run id"), _encode_id(node_id, "node id")
    header = _PLAIN_FIXED.pack(
        _PLAIN_MAGIC, _VERSION, round, os.urandom(16), hashlib.sha256(payload).digest(),
        len(payload), len(run), len(node),
    ) + run + node  # fmt: skip
    signature = signer.sign(_PLAIN_SIG_LABEL + header)
    return b"".join((header, payload, signature))


def open_signed_update(
    envelope: bytes,
    *,
    known_signers: Mapping[str, Ed25519PublicKey],
    run_id: str | int,
    round: int,
    seen: ReplayGuard,
) -> OpenedUpdate:
    """Verify a :func:`sign_update` envelope like :func:`open_update` does a sealed one."""
    view = memoryview(envelope)
    fixed = _unpack_fixed(_PLAIN_FIXED, _PLAIN_MAGIC, view)
    round_, message_id, digest, payload_len, run_len, node_len = fixed[2:]
    header_len = _PLAIN_FIXED.size + run_len + node_len
    _expect_len(view, header_len + payload_len + _SIG_LEN)
    ids = view[_PLAIN_FIXED.size : header_len]
    header_run, node_id = _decode_id(ids[:run_len]), _decode_id(ids[run_len:])
    signed = _PLAIN_SIG_LABEL + view[:header_len].tobytes()
    _verify(_signer_key(known_signers, node_id), view[-_SIG_LEN:], signed)
    _check_context(header_run, round_, run_id, round)
    seen.check(run_id, round, message_id.hex())
    payload = view[header_len : header_len + payload_len]
    if not hmac.compare_digest(hashlib.sha256(payload).digest(), digest):
        raise SealError("tampered", f"update from {node_id} does not match its signed digest")
    seen.record(run_id, round, message_id.hex())
    return OpenedUpdate(node_id=node_id, payload=payload.tobytes(), message_id=message_id.hex())


# --- payload helpers ---------------------------------------------------------------------------


def state_dict_to_bytes(state_dict: Mapping[str, torch.Tensor]) -> bytes:
    """safetensors bytes: no pickle, so a hostile payload cannot run code when loaded."""
    from safetensors.torch import save  # torch import deferred: key and PKI tools stay fast

    try:
        return save({name: t.detach().contiguous() for name, t in state_dict.items()})
    except (RuntimeError, ValueError) as err:
        raise SealError("malformed", f"state dict cannot be serialised: {err}") from None


def state_dict_from_bytes(data: bytes) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        return load(data)
    except SafetensorError as err:
        raise SealError("malformed", f"payload is not a safetensors state dict: {err}") from None


# --- shared internals --------------------------------------------------------------------------


def _build(total: int, fill: Callable[[memoryview], None]) -> bytes:
    """Allocate ``total`` bytes once, let ``fill`` write them, and return them as ``bytes``.

    CPython's BytesIO returns its own buffer from ``getvalue()`` without copying when its size is
    exact and no view is alive; a bytearray would need a second 91 MB copy into ``bytes``, which
    Flower's ConfigRecord requires. Elsewhere this is merely one copy slower, never wrong.
    """
    buffer = io.BytesIO()
    buffer.seek(total - 1)
    buffer.write(b"\0")
    with buffer.getbuffer() as view:
        fill(view)
    return buffer.getvalue()


def _cipher(shared: bytes, ephemeral_raw: bytes, server_public: X25519PublicKey) -> AESGCM:
    """HKDF binds both public keys into the key, as HPKE does, so no key is reused across them."""
    info = _SEAL_KDF_LABEL + ephemeral_raw + server_public.public_bytes_raw()
    return AESGCM(HKDF(hashes.SHA256(), length=32, salt=None, info=info).derive(shared))


def _exchange(private: X25519PrivateKey, public: X25519PublicKey) -> bytes:
    try:
        return private.exchange(public)
    except ValueError:  # low-order point: the shared secret would be all zeros
        raise SealError("malformed", "degenerate X25519 public key") from None


def _x25519_public(raw: bytes) -> X25519PublicKey:
    try:
        return X25519PublicKey.from_public_bytes(bytes(raw))
    except ValueError:
        raise SealError("malformed", "an X25519 public key is 32 raw bytes") from None


def _fingerprint_raw(public: X25519PublicKey) -> bytes:
    return bytes.fromhex(fingerprint(public))


def _signer_key(known: Mapping[str, Ed25519PublicKey], node_id: str) -> Ed25519PublicKey:
    key = known.get(node_id)
    if key is None:
        raise SealError("unknown-signer", f"node {node_id!r} is not registered")
    return key


def _verify(public: Ed25519PublicKey, signature: memoryview, message: bytes) -> None:
    try:
        public.verify(signature.tobytes(), message)
    except InvalidSignature:
        raise SealError(
            "bad-signature", "signature does not verify with the expected key"
        ) from None


def _check_context(got_run: str, got_round: int, run_id: str | int, round: int) -> None:
    if got_run != str(run_id):
        raise SealError("wrong-run", f"message is for run {got_run!r}, expected {run_id!r}")
    if got_round != round:
        raise SealError("wrong-round", f"message is for round {got_round}, expected {round}")


def _check_round(round: int) -> None:
    if not 0 <= round <= _MAX_ROUND:
        raise SealError("malformed", f"round must be in 0..{_MAX_ROUND} (got {round})")


def _round_key(run_id: str | int, round: int) -> str:
    return f"{run_id}:{round}"


def _encode_id(value: str, what: str) -> bytes:
    raw = value.encode("utf-8")
    if not 0 < len(raw) <= _MAX_ID_LEN:
        raise SealError("malformed", f"{what} must be 1..{_MAX_ID_LEN} UTF-8 bytes")
    return raw


def _decode_id(raw: memoryview) -> str:
    try:
        return raw.tobytes().decode("utf-8")
    except UnicodeDecodeError:
        raise SealError("malformed", "identifier is not UTF-8") from None


def _unpack_fixed(layout: struct.Struct, magic: bytes, view: memoryview) -> tuple:
    if len(view) < layout.size:
        raise SealError("malformed", f"{len(view)} bytes is shorter than any {magic!r} message")
    fields = layout.unpack_from(view)
    if fields[0] != magic or fields[1] != _VERSION:
        raise SealError("malformed", f"not a {magic.decode()} v{_VERSION} message")
    return fields


def _expect_len(view: memoryview, expected: int) -> None:
    if len(view) != expected:
        raise SealError("malformed", f"length {len(view)} does not match its header ({expected})")
