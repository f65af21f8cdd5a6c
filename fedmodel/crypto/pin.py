"""A node's pin: the one server it trusts, named by a small file on its own disk.

``server.pin.json`` beside ``node.toml``::

    {"server_exchange_fingerprint": "<hex sha256 of the server's X25519 key (DER SPKI)>",
     "server_verify_key": "server.ed25519.pub"}

* ``server_exchange_fingerprint`` is what every sealed envelope names as its recipient
  (:func:`fedmodel.crypto.keys.fingerprint`). The server sends its X25519 key inside each
  signed request; the node seals to it only if it matches this pin.
* ``server_verify_key`` is the server's Ed25519 public key (PEM), a path relative to the pin
  file's folder (or absolute). The whole request (config and global model) must verify under
  it before the node reads any of it (``clients/sealing.py``).

In simulation the virtual nodes are pinned by the server that runs them
(:mod:`fedmodel.sim_nodes`); in deployment each site pins once (``fedmodel node pin``), with the
fingerprints the coordinator reads out over a trusted channel (docs/operator-guide.md).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedmodel.config import ConfigError
from fedmodel.crypto.keys import KeyFileError, load_verify_key
from fedmodel.io import atomic_write_json

PIN_FILE = "server.pin.json"


class PinMissing(ConfigError):
    """The node has not pinned a server: it trusts no request until it does."""


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
        raise PinMissing(
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
