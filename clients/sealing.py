"""The node's end of sealed updates: whom it trusts as the server, and how it talks to it.

A node trusts exactly one server, named by a small file on its own disk beside ``node.toml``,
``server.pin.json``::

    {"server_exchange_fingerprint": "<hex sha256 of the server's X25519 key (DER SPKI)>",
     "server_verify_key": "server.ed25519.pub"}

* ``server_exchange_fingerprint`` is what every envelope names as its recipient
  (:func:`fedmodel.crypto.keys.fingerprint`). The server sends its X25519 key with each
  training request; the node seals to it only if it matches this pin, so a relay that swaps in
  its own key gets a refusal, never an update.
* ``server_verify_key`` is the server's Ed25519 public key (PEM), a path relative to the pin
  file's folder (or absolute). The global model must verify under it for this run and round.

In simulation ``fedmodel simulate`` writes the pin into every virtual node's folder
(``clients/sim_nodes.py``). In deployment the site operator writes it once, from the
fingerprint and key file the federation's coordinator hands out over a trusted channel.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from flwr.app import ConfigRecord, RecordDict

from fedmodel.config import ConfigError
from fedmodel.crypto.keys import KeyFileError, load_verify_key
from fedmodel.crypto.seal import (
    SealError,
    load_server_public,
    seal_update,
    state_dict_from_bytes,
    verify_global,
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
            f"{path}: no server pin; this run seals updates, so the node needs the server's "
            "key fingerprint and verify key (see clients/sealing.py)"
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
class SealedChannel:
    """One round's link to the pinned server: check what comes in, seal what goes out."""

    pin: ServerPin
    server_public: X25519PublicKey
    run_id: str
    round: int

    @classmethod
    def connect(
        cls, pin: ServerPin, config: ConfigRecord, run_id: str, round: int
    ) -> SealedChannel:
        """Accept the server key the request carries only if it is the pinned one."""
        raw = config.get(wire.SERVER_EXCHANGE_KEY)
        if not isinstance(raw, bytes):
            raise SealError("malformed", "the request carries no server X25519 key")
        return cls(pin, load_server_public(raw, pin.exchange_fingerprint), run_id, round)

    def open_global(self, content: RecordDict) -> dict[str, torch.Tensor]:
        """The global model, if the pinned server signed it for this run and round."""
        record = content.config_records.get(wire.SIGNED_GLOBAL)
        blob = record.get(wire.BLOB) if record is not None else None
        if not isinstance(blob, bytes):
            raise SealError("malformed", "the request carries no signed global model")
        payload = verify_global(blob, self.pin.verify_key, self.run_id, self.round)
        return state_dict_from_bytes(payload)

    def seal(
        self,
        state_dict: Mapping[str, torch.Tensor],
        metrics: Mapping[str, int | float],
        node: Mapping[str, str],
        signer: Ed25519PrivateKey,
    ) -> RecordDict:
        """Seal tensors and metrics together, signed with the node's ledger key."""
        envelope = seal_update(
            wire.update_payload(state_dict, metrics, node),
            server_public=self.server_public,
            signer=signer,
            run_id=self.run_id,
            round=self.round,
            node_id=node["name"],
        )
        return wire.sealed_record(envelope, node["name"])
