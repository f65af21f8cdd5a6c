"""The node's end of the channel: whom it trusts as the server, and how it talks to it.

A node trusts exactly one server, named by a small file on its own disk beside ``node.toml``,
``server.pin.json``; every request must be signed by the key it names, so a node without a pin
trains nothing::

    {"server_exchange_fingerprint": "<hex sha256 of the server's X25519 key (DER SPKI)>",
     "server_verify_key": "server.ed25519.pub"}

* ``server_exchange_fingerprint`` is what every sealed envelope names as its recipient
  (:func:`fedmodel.crypto.keys.fingerprint`). The server sends its X25519 key inside each
  signed request; the node seals to it only if it matches this pin.
* ``server_verify_key`` is the server's Ed25519 public key (PEM), a path relative to the pin
  file's folder (or absolute). The whole request (config and global model) must verify under
  it before the node reads any of it.

In simulation ``fedmodel simulate`` writes the pin into every virtual node's folder
(``clients/sim_nodes.py``). In deployment the site operator writes it once, from the
fingerprint and key file the federation's coordinator hands out over a trusted channel.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from flwr.app import RecordDict

from fedmodel.config import ConfigError
from fedmodel.crypto.keys import KeyFileError, load_verify_key
from fedmodel.crypto.seal import (
    SealError,
    SignedRequest,
    load_server_public,
    open_request,
    seal_update,
    sign_update,
    state_dict_from_bytes,
)
from fedmodel.io import atomic_write_json
from server import wire

PIN_FILE = "server.pin.json"


@dataclass(frozen=True)
class ServerPin:
    """What a node trusts: the server's X25519 fingerprint and its Ed25519 verify key."""

    exchange_fingerprint: str
    verify_key: Ed25519PublicKey
    path: Path


def write_pin(folder: Path, exchange_fingerprint: str, verify_key_path: Path) -> Path:
    """Write ``folder/server.pin.json``; the key path is stored as given (absolute in sim)."""
    path = Path(folder) / PIN_FILE
    atomic_write_json(
        path,
        {
            "server_exchange_fingerprint": exchange_fingerprint,
            "server_verify_key": os.fspath(verify_key_path),
        },
    )
    return path


def load_pin(folder: Path) -> ServerPin:
    """Read the node's pin; a missing or malformed pin is a configuration error naming the file."""
    path = Path(folder) / PIN_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        fingerprint = str(data["server_exchange_fingerprint"])
        key_path = Path(str(data["server_verify_key"]))
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no server pin; get the coordinator's fingerprint and server.ed25519.pub "
            "over a trusted channel and run `fedmodel node pin`"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{path}: malformed server pin ({err})") from None
    if not key_path.is_absolute():
        key_path = path.parent / key_path
    try:
        verify_key = load_verify_key(key_path)
    except KeyFileError as err:
        raise ConfigError(f"{path}: server_verify_key: {err}") from None
    return ServerPin(fingerprint, verify_key, path)


@dataclass(frozen=True)
class ServerChannel:
    """One request from the pinned server: verified before it is read, answered signed.

    :meth:`open` checks the request's signature against the pin before a byte of its config is
    parsed, and, when the request names the server's exchange key (sealed runs), that the key is
    the pinned one. :meth:`reply` signs the update with the node's ledger key, and seals it to
    that key when the run seals.
    """

    pin: ServerPin
    request: SignedRequest
    server_public: X25519PublicKey | None

    @classmethod
    def open(cls, pin: ServerPin, content: RecordDict) -> ServerChannel:
        record = content.config_records.get(wire.SIGNED_REQUEST)
        blob = record.get(wire.BLOB) if record is not None else None
        if not isinstance(blob, bytes):
            raise SealError("malformed", "the message carries no signed request")
        request = open_request(blob, pin.verify_key)
        raw = request.config.get(wire.SERVER_EXCHANGE_KEY)
        server_public = None
        if raw is not None:
            try:
                key = bytes.fromhex(str(raw))
            except ValueError:
                raise SealError("malformed", "server exchange key is not hex") from None
            server_public = load_server_public(key, pin.exchange_fingerprint)
        return cls(pin, request, server_public)

    def global_state(self) -> dict[str, torch.Tensor]:
        return state_dict_from_bytes(self.request.payload)

    def reply(self, payload: bytes, node_name: str, signer: Ed25519PrivateKey) -> bytes:
        """The envelope for ``payload`` (:func:`server.wire.update_payload`): sealed to the
        pinned server when the request carried its exchange key, else signed in the clear."""
        common = {"signer": signer, "run_id": self.request.run_id, "round": self.request.round}
        if self.server_public is None:
            return sign_update(payload, node_id=node_name, **common)
        return seal_update(payload, server_public=self.server_public, node_id=node_name, **common)
