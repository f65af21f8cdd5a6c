"""The server's end of sealed updates: its keys, the registered node keys, opening replies.

Key material (``server-keys/``, private files 0600, folder 0700):

* ``server.x25519`` (+ ``.pub``): nodes seal updates to it; they pin its fingerprint. A fresh
  one per run in simulation, because whoever holds it can read and re-tag every update
  (docs/security.md).
* ``server.ed25519`` (+ ``.pub``): signs the global model each round and the run's audit log.

Registered node keys: the Ed25519 public key each node signs its ledger and updates with, by node
name. In simulation they are read from the virtual nodes' folders when the run starts; in
deployment from a directory of ``<node>.ed25519.pub`` files (what ``fedmodel keys`` writes),
which the coordinator fills when it registers a site. Nothing a reply says can add a signer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from clients.node_config import NODE_FILE, load_node_config
from fedmodel.config import ConfigError
from fedmodel.crypto import keys as keyfiles
from fedmodel.crypto.chain import ChainError, verify_entry
from fedmodel.crypto.keys import (
    KeyFileError,
    fingerprint,
    load_exchange_key,
    load_signing_key,
    load_verify_key,
    public_path,
    save_exchange_key,
    save_signing_key,
)
from fedmodel.crypto.seal import (
    ReplayGuard,
    SealError,
    open_update,
    sign_global,
    state_dict_to_bytes,
)
from fedmodel.io import atomic_write_json
from server import wire

KEYS_DIR = "server-keys"
EXCHANGE_FILE = "server.x25519"
SIGNING_FILE = "server.ed25519"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerKeys:
    """The ServerApp's two private keys and where their public halves are."""

    exchange: X25519PrivateKey
    signing: Ed25519PrivateKey
    directory: Path

    @property
    def exchange_public_raw(self) -> bytes:
        return self.exchange.public_key().public_bytes_raw()

    @property
    def exchange_fingerprint(self) -> str:
        """What nodes pin, and what every envelope names as its recipient."""
        return fingerprint(self.exchange.public_key())

    @property
    def verify_key_path(self) -> Path:
        return public_path(self.directory / SIGNING_FILE)

    def fingerprints(self) -> dict[str, str]:
        return {"exchange": self.exchange_fingerprint, "signing": fingerprint(self.signing)}


def ensure_server_keys(directory: Path) -> ServerKeys:
    """Load the keys in ``directory``, generating whichever is missing (simulation, resume)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    exchange_path, signing_path = directory / EXCHANGE_FILE, directory / SIGNING_FILE
    if not exchange_path.exists():  # force: without its private half, a stale .pub is garbage
        save_exchange_key(X25519PrivateKey.generate(), exchange_path, force=True)
    if not signing_path.exists():
        save_signing_key(Ed25519PrivateKey.generate(), signing_path)
    return load_server_keys(directory)


def load_server_keys(directory: Path) -> ServerKeys:
    """Read both keys (deployment: a folder only the ServerApp's account can read)."""
    directory = Path(directory)
    try:
        exchange = load_exchange_key(directory / EXCHANGE_FILE)
        signing = load_signing_key(directory / SIGNING_FILE)
    except KeyFileError as err:
        raise ConfigError(f"server keys: {err}") from None
    return ServerKeys(exchange=exchange, signing=signing, directory=directory)


# --- registered node keys ------------------------------------------------------------------------


def signers_from_directory(directory: Path) -> dict[str, Ed25519PublicKey]:
    """Deployment registry: ``<dir>/<node>.ed25519.pub`` for every registered node."""
    try:
        files = keyfiles.registered_verify_keys(directory)
    except KeyFileError as err:
        raise ConfigError(str(err)) from None
    return {name: _verify_key(path) for name, path in files.items()}


def signers_from_sim_nodes(nodes_dir: Path) -> dict[str, Ed25519PublicKey]:
    """Simulation: each virtual node's name (node.toml) and its signing key's public half."""
    signers: dict[str, Ed25519PublicKey] = {}
    for node_file in sorted(Path(nodes_dir).glob(f"*/{NODE_FILE}")):
        cfg = load_node_config(node_file)
        signers[cfg.name] = _verify_key(public_path(cfg.signing_key))
    if not signers:
        raise ConfigError(f"{nodes_dir}: no virtual nodes to register")
    return signers


def _verify_key(path: Path) -> Ed25519PublicKey:
    try:
        return load_verify_key(path)
    except KeyFileError as err:
        raise ConfigError(f"registered node key: {err}") from None


# --- one run's sealed traffic ------------------------------------------------------------------


@dataclass(frozen=True)
class OpenedReply:
    """A sealed reply, verified and decrypted into the plain form strategies aggregate."""

    content: RecordDict
    node: str
    message_id: str


@dataclass
class SealedTraffic:
    """Signs what the server sends and opens what nodes send back, for one run."""

    keys: ServerKeys
    signers: Mapping[str, Ed25519PublicKey]
    run_id: str
    guard: ReplayGuard = field(default_factory=ReplayGuard)
    guard_path: Path | None = None  # where accepted ids survive a ServerApp restart

    @classmethod
    def for_run(
        cls,
        keys: ServerKeys,
        signers: Mapping[str, Ed25519PublicKey],
        run_id: str,
        guard_path: Path,
    ) -> SealedTraffic:
        """Traffic for one run, its replay guard read back from ``guard_path`` when present.

        A resumed run repeats the round it crashed in, with the same run id; without the ids
        accepted before the crash, a relay could replay a node's update from the first attempt
        next to the node's new one, and that node would count twice in the aggregate.
        """
        guard = ReplayGuard()
        if guard_path.is_file():
            try:
                guard = ReplayGuard.from_dict(json.loads(guard_path.read_text()))
            except (ValueError, TypeError, AttributeError) as err:
                raise ConfigError(f"{guard_path}: unreadable replay guard: {err}") from None
        return cls(keys=keys, signers=signers, run_id=run_id, guard=guard, guard_path=guard_path)

    def sign_requests(
        self, messages: Iterable[Message], arrays: ArrayRecord, rnd: int
    ) -> list[Message]:
        """Replace the plain global model by one signed for this run and round.

        Signed once per round: every node gets the same bytes object.
        """
        self.guard.forget_before(self.run_id, rnd)
        payload = state_dict_to_bytes(arrays.to_torch_state_dict())
        blob = sign_global(payload, self.keys.signing, self.run_id, rnd)
        signed = ConfigRecord({wire.BLOB: blob})
        out = list(messages)
        for msg in out:
            kept = {name: rec for name, rec in msg.content.items() if name != wire.ARRAYS}
            msg.content = RecordDict({**kept, wire.SIGNED_GLOBAL: signed})
        return out

    def open_reply(self, content: RecordDict, rnd: int) -> OpenedReply:
        """Verify, check freshness, decrypt; raises :class:`SealError` with the first failure."""
        record = content.config_records.get(wire.SEALED)
        envelope = record.get(wire.ENVELOPE) if record is not None else None
        if not isinstance(envelope, bytes):
            what = "an unsealed update" if wire.ARRAYS in content else "no sealed update"
            raise SealError("malformed", f"reply carries {what}; this run accepts sealed only")
        opened = open_update(
            envelope,
            server_private=self.keys.exchange,
            known_signers=self.signers,
            run_id=self.run_id,
            round=rnd,
            seen=self.guard,
        )
        if self.guard_path is not None:  # before the update can count: never accepted twice
            atomic_write_json(self.guard_path, self.guard.to_dict())
        plain = wire.update_from_payload(opened.payload)
        named = str(plain[wire.NODE].get("name"))
        if named != opened.node_id:
            raise SealError(
                "malformed", f"payload names node {named!r}, envelope signed by {opened.node_id!r}"
            )
        return OpenedReply(plain, opened.node_id, opened.message_id)

    def check_refusal(self, content: RecordDict, rnd: int) -> None:
        """A refusal in a sealed run must be the claimed node's own signed ledger entry for
        this run and round; otherwise a relay could make a site look as if it refused."""
        record = content[wire.REFUSAL]
        node = str(record.get("node"))
        key = self.signers.get(node)
        if key is None:
            raise SealError("unknown-signer", f"refusal names unregistered node {node!r}")
        line = record.get(wire.LEDGER_ENTRY)
        if not isinstance(line, str):
            raise SealError("malformed", "refusal carries no signed ledger entry")
        try:
            entry = verify_entry(line, key)
        except ChainError as err:
            raise SealError("bad-signature", f"refusal's ledger entry: {err}") from None
        body = entry.body
        if body.get("kind") != "refusal" or body.get("node") != node:
            raise SealError(
                "malformed", f"ledger entry is a {body.get('kind')!r} of {body.get('node')!r}"
            )
        if body.get("run_id") != self.run_id:
            raise SealError("wrong-run", f"refusal is for run {body.get('run_id')!r}")
        if body.get("round") != rnd:
            raise SealError("wrong-round", f"refusal is for round {body.get('round')!r}, not {rnd}")
        if body.get("reason") != record.get("reason") or entry.hash != record.get("ledger-hash"):
            raise SealError("tampered", "refusal differs from the node's signed ledger entry")


def seal_reason(err: SealError) -> str:
    """``"<reason>: <detail>"`` for run records: machine-readable code first, then the story."""
    return f"{err.reason}: {err.detail}"
