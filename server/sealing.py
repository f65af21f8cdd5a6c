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

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from fedmodel.config import ConfigError
from fedmodel.crypto import keys as keyfiles
from fedmodel.crypto.chain import ChainEntry, ChainError, ChainHead, verify_entry
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
    open_signed_update,
    open_update,
    sign_request,
    state_dict_to_bytes,
)
from fedmodel.io import atomic_write_json
from fedmodel.node_config import NODE_FILE, load_node_config
from fedmodel.sim_nodes import declared_names
from server import wire
from server.ledger_copies import LedgerCopies

if TYPE_CHECKING:
    import torch

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


def signers_from_sim_nodes(nodes_dir: Path) -> Mapping[str, Ed25519PublicKey]:
    """Simulation: each virtual node's name (node.toml) and its signing key's public half.

    Nodes declared by a plan make their folders on first use, so their keys are read then
    (:class:`SimNodeKeys`); folders of an older run without a plan are all read now.
    """
    if declared_names(nodes_dir) is not None:
        return SimNodeKeys(Path(nodes_dir))
    signers: dict[str, Ed25519PublicKey] = {}
    for node_file in sorted(Path(nodes_dir).glob(f"*/{NODE_FILE}")):
        cfg = load_node_config(node_file)
        signers[cfg.name] = _verify_key(public_path(cfg.signing_key))
    if not signers:
        raise ConfigError(f"{nodes_dir}: no virtual nodes to register")
    return signers


class SimNodeKeys(Mapping[str, Ed25519PublicKey]):
    """The simulation's registry: a declared node's key, once the node has made its folder.

    Its entries are the nodes whose folders exist: a node that has not made its key yet has
    signed nothing, so it has nothing to verify. A key is read once, from the folder of the
    declared node of that name (never a folder a reply names), and ``on_register`` hears of it
    (the ServerApp publishes it into the run folder, as it does every registered key).
    """

    def __init__(self, nodes_dir: Path) -> None:
        self.nodes_dir = Path(nodes_dir)
        self._folders = declared_names(nodes_dir) or {}
        self._keys: dict[str, Ed25519PublicKey] = {}
        self.on_register: Callable[[str, Ed25519PublicKey], None] | None = None

    def __getitem__(self, name: str) -> Ed25519PublicKey:
        key = self._keys.get(name)
        if key is not None:
            return key
        folder = self._folders.get(name)
        if folder is None or not (folder / NODE_FILE).is_file():
            raise KeyError(name)
        cfg = load_node_config(folder / NODE_FILE)
        if cfg.name != name:
            raise ConfigError(f"{folder / NODE_FILE}: names node {cfg.name!r}, declared {name!r}")
        key = self._keys[name] = _verify_key(public_path(cfg.signing_key))
        if self.on_register is not None:
            self.on_register(name, key)
        return key

    def __iter__(self) -> Iterator[str]:
        return (n for n, f in self._folders.items() if n in self._keys or (f / NODE_FILE).is_file())

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _verify_key(path: Path) -> Ed25519PublicKey:
    try:
        return load_verify_key(path)
    except KeyFileError as err:
        raise ConfigError(f"registered node key: {err}") from None


# --- one run's signed traffic ------------------------------------------------------------------


@dataclass(frozen=True)
class OpenedReply:
    """A reply, verified (and decrypted) into the plain form strategies aggregate."""

    content: RecordDict
    node: str
    message_id: str


@dataclass
class SignedTraffic:
    """Signs what the server sends and checks what nodes send back, for one run.

    Every request is signed whole (config and model, :func:`fedmodel.crypto.seal.sign_request`);
    every reply must be an envelope signed by a registered node key for this run and round,
    sealed to the server when the run seals. On top of each envelope's own checks, a run binds
    every registered signer to the Flower node id it first answered from and accepts one reply
    per signer per round, so one site cannot count twice, whoever relays its messages.
    """

    keys: ServerKeys
    signers: Mapping[str, Ed25519PublicKey]
    run_id: str
    sealed: bool
    guard: ReplayGuard = field(default_factory=ReplayGuard)
    guard_path: Path | None = None  # where accepted ids survive a ServerApp restart
    senders: dict[str, int] = field(default_factory=dict)  # signer -> Flower node id
    # Flower node id -> its signers in binding order: a request's lookup, not a scan of all
    _signers_at: dict[int, list[str]] = field(default_factory=dict)
    heads: dict[str, dict[str, Any]] = field(default_factory=dict)  # signer -> last ledger head
    request_ttl: float = 3600.0  # seconds a request stays answerable (the round timeout + slack)
    answered: dict[tuple[int, str], set[str]] = field(default_factory=dict)  # (round, task)
    copies: LedgerCopies | None = None  # where each reply's ledger entries go (the run folder)

    @classmethod
    def for_run(
        cls,
        keys: ServerKeys,
        signers: Mapping[str, Ed25519PublicKey],
        run_id: str,
        guard_path: Path,
        *,
        sealed: bool,
    ) -> SignedTraffic:
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
        return cls(keys, signers, run_id, sealed, guard=guard, guard_path=guard_path)

    def request_config(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The JSON the server signs: every value of the round's config record."""
        out: dict[str, Any] = {}
        for key, value in config.items():
            out[key] = value.hex() if isinstance(value, bytes) else value
        if self.sealed:
            out[wire.SERVER_EXCHANGE_KEY] = self.keys.exchange_public_raw.hex()
        return out

    def sign_requests(
        self,
        messages: Iterable[Message],
        arrays: ArrayRecord,
        rnd: int,
        sim_nodes_dir: str | None = None,
        task: str = "train",
    ) -> list[Message]:
        """Replace each request's content by a blob signed for this run, round, task and node.

        Each node's blob names its Flower node id (another node refuses it), an expiry (an old
        request replayed later is refused) and, once the node has answered in this run, the
        ledger head it reported (a node whose ledger no longer holds it refuses to train). The
        model is serialised and hashed once per round.
        """
        out = list(messages)
        if not out:
            return out
        if task == "train":
            self.guard.forget_before(self.run_id, rnd)
        payload = state_dict_to_bytes(arrays.to_torch_state_dict())
        digest = hashlib.sha256(payload).digest()
        not_after = int(time.time() + self.request_ttl)
        for msg in out:
            config = msg.content.config_records.get(wire.CONFIG, ConfigRecord())
            dst = int(msg.metadata.dst_node_id)
            signed = self.node_config(config, rnd, task, dst, not_after)
            blob = sign_request(payload, self.keys.signing, signed, payload_sha256=digest)
            msg.content = wire.request_record(blob, sim_nodes_dir)
        return out

    def sign_legacy_request(
        self, config: Mapping[str, Any], arrays: ArrayRecord, rnd: int, dst: int
    ) -> bytes:
        """The same signed blob for SecAgg+'s legacy ``FitIns`` config (one per node)."""
        payload = state_dict_to_bytes(arrays.to_torch_state_dict())
        not_after = int(time.time() + self.request_ttl)
        signed = self.node_config(config, rnd, "train", dst, not_after)
        return sign_request(payload, self.keys.signing, signed)

    def node_config(
        self, config: Mapping[str, Any], rnd: int, task: str, dst: int, not_after: int
    ) -> dict[str, Any]:
        signed = {
            **self.signed_config(config, rnd),
            wire.TASK: task,
            wire.DST_NODE: dst,
            wire.NOT_AFTER: not_after,
        }
        head = self._head_of(dst)
        if head is not None:
            signed[wire.EXPECTED_HEAD] = head
        held = self._held_of(dst)
        if held is not None:
            signed[wire.LEDGER_HELD] = held
        return signed

    def _held_of(self, dst: int) -> dict[str, Any] | None:
        """The head of the ledger copy held for the node at Flower id ``dst``: the node answers
        with the entries after it (all of them while the server does not know who ``dst`` is)."""
        if self.copies is None:
            return None
        for signer in self._signers_at.get(dst, ()):
            return self.copies.held(signer).as_dict()
        return None

    def _head_of(self, dst: int) -> dict[str, Any] | None:
        """The ledger head the node at Flower id ``dst`` last reported in this run, if any."""
        for signer in self._signers_at.get(dst, ()):
            if signer in self.heads:
                return dict(self.heads[signer])
        return None

    def signed_config(self, config: Mapping[str, Any], rnd: int) -> dict[str, Any]:
        return {**self.request_config(config), wire.RUN_ID: self.run_id, wire.ROUND: rnd}

    def open_reply(
        self,
        msg: Message,
        rnd: int,
        task: str = "train",
        reference: Mapping[str, torch.Tensor] | None = None,
    ) -> OpenedReply:
        """Verify, check freshness and binding, decrypt, decode a compressed update against
        ``reference`` (the round's global model); raises :class:`SealError` at the first
        failure."""
        record = msg.content.config_records.get(wire.UPDATE)
        envelope = record.get(wire.ENVELOPE) if record is not None else None
        if not isinstance(envelope, bytes):
            raise SealError("malformed", "reply carries no update envelope")
        checks = {
            "known_signers": self.signers,
            "run_id": self.run_id,
            "round": rnd,
            "seen": self.guard,
        }
        if self.sealed:
            opened = open_update(envelope, server_private=self.keys.exchange, **checks)
        else:
            opened = open_signed_update(envelope, **checks)
        self._bind(opened.node_id, msg.metadata.src_node_id, rnd, task)
        if self.guard_path is not None:  # before the update can count: never accepted twice
            atomic_write_json(self.guard_path, self.guard.to_dict())
        plain = wire.update_from_payload(opened.payload, reference)
        named = str(plain[wire.NODE].get("name"))
        if named != opened.node_id:
            raise SealError(
                "malformed", f"payload names node {named!r}, envelope signed by {opened.node_id!r}"
            )
        count = plain[wire.METRICS].get("ledger-count")
        head = plain[wire.NODE].get("ledger-hash")
        suffix = wire.take_ledger_suffix(plain)
        if isinstance(count, int) and isinstance(head, str):
            self._copy(opened.node_id, suffix, ChainHead(head, count))
            self.heads[opened.node_id] = {"hash": head, "count": count}
        return OpenedReply(plain, opened.node_id, opened.message_id)

    def _copy(self, node: str, suffix: bytes | None, reported: ChainHead) -> None:
        """Extend the run folder's copy of the node's ledger; raises ``SealError``
        (``ledger-history``) for entries that do not extend it."""
        if self.copies is not None:
            self.copies.extend(node, suffix, reported)

    def _bind(self, signer: str, src_node_id: int, rnd: int, task: str = "train") -> None:
        """One Flower node per signer for the whole run; one accepted reply per signer per round
        and task."""
        if signer not in self.senders:
            self._signers_at.setdefault(src_node_id, []).append(signer)
        bound = self.senders.setdefault(signer, src_node_id)
        if bound != src_node_id:
            raise SealError(
                "malformed", f"{signer} answers from Flower node {src_node_id}, bound to {bound}"
            )
        done = self.answered.setdefault((rnd, task), set())
        if signer in done:
            raise SealError("duplicate", f"{signer} already has an accepted reply this round")
        done.add(signer)

    def check_refusal(self, msg: Message, rnd: int, task: str = "train") -> None:
        """A refusal must be the claimed node's own signed ledger entry for this run and round,
        and say exactly what that entry says; otherwise a relay could make a site look as if
        it refused, or change what its refusal reports."""
        record = msg.content[wire.REFUSAL]
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
        if body.get("run_id") == wire.UNVERIFIED_RUN:  # never counts as this round's answer
            raise SealError("wrong-run", f"{node} could not verify a request: {body.get('reason')}")
        if body.get("run_id") != self.run_id:
            raise SealError("wrong-run", f"refusal is for run {body.get('run_id')!r}")
        if body.get("round") != rnd:
            raise SealError("wrong-round", f"refusal is for round {body.get('round')!r}, not {rnd}")
        if not _refusal_matches(record, entry):
            raise SealError("tampered", "refusal differs from the node's signed ledger entry")
        self._bind(node, msg.metadata.src_node_id, rnd, task)
        suffix = record.get(wire.LEDGER_SUFFIX)
        self._copy(node, suffix if isinstance(suffix, bytes) else None, head_after(entry))
        self.heads[node] = head_after(entry).as_dict()


def head_after(entry: ChainEntry) -> ChainHead:
    """The chain's head once ``entry`` is its last."""
    return ChainHead(entry.hash, entry.seq + 1)


def _refusal_matches(record: ConfigRecord, entry: ChainEntry) -> bool:
    """Every value the refusal reports is the signed entry's own: reason, head, count, epsilon."""
    body = entry.body
    claimed = record.get("projected-epsilon")
    signed = body.get("projected_epsilon")
    same_epsilon = (signed is None and isinstance(claimed, float) and math.isnan(claimed)) or (
        signed is not None and claimed == signed
    )
    return (
        body.get("reason") == record.get("reason")
        and entry.hash == record.get("ledger-hash")
        and record.get("ledger-count") == entry.seq + 1
        and same_epsilon
    )


def seal_reason(err: SealError) -> str:
    """``"<reason>: <detail>"`` for run records: machine-readable code first, then the story."""
    return f"{err.reason}: {err.detail}"
