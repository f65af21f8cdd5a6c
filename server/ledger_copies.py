"""The run folder's copies of the sites' ledgers, and the public keys they are checked with.

Every reply carries the site's signed ledger entries since the head the server holds
(:mod:`fedmodel.privacy.ledger_copy`); :class:`LedgerCopies` keeps them per site in
``RUN_DIR/ledgers/<node>/`` and refuses a suffix that would not leave one sound chain of the
registered node's key. The run folder also gets the public halves the report verifies with
(:func:`publish_keys`): ``registered-keys/<node>.ed25519.pub`` (whose replies counted) and
``server-keys/server.ed25519.pub`` (the key that signs the audit log and every request, the one
the sites pinned). Only public halves: the report then needs nothing but the run folder, and a
reviewer compares the server key's fingerprint with the one the coordinator published.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedmodel.crypto.chain import ChainHead
from fedmodel.crypto.keys import REGISTERED_SUFFIX, save_public_key
from fedmodel.crypto.seal import SealError
from fedmodel.errors import FedmodelError
from fedmodel.nodenames import is_node_name
from fedmodel.privacy.ledger_copy import COPIES_DIR, LedgerSuffix, extend_copy, held_head

REGISTERED_DIR = "registered-keys"  # RUN_DIR/registered-keys/<node>.ed25519.pub
SERVER_KEY_FILE = Path("server-keys") / "server.ed25519.pub"  # the audit log's verify key


@dataclass(frozen=True)
class LedgerCopies:
    """``RUN_DIR/ledgers/<node>/``: what the server holds of each registered node's ledger."""

    run_dir: Path
    signers: Mapping[str, Ed25519PublicKey]

    def folder(self, node: str) -> Path:
        """A registered node's copy; names come from the operator's registry, and are checked
        against the node-name rule before they become a path all the same."""
        if node not in self.signers or not is_node_name(node):
            raise SealError("unknown-signer", f"no ledger copy for node {node!r}")
        return Path(self.run_dir) / COPIES_DIR / node

    def held(self, node: str) -> ChainHead:
        """The head of the copy, named in the node's next request."""
        return held_head(self.folder(node))

    def extend(self, node: str, data: bytes | None, reported: ChainHead) -> None:
        """Append a reply's entries; a suffix that does not extend the copy into a sound chain
        ending at ``reported`` (a rewritten history, a gap, another key) rejects the reply."""
        try:
            suffix = LedgerSuffix.decode(data)
            extend_copy(self.folder(node), node, suffix, self.signers[node], reported)
        except FedmodelError as err:
            if isinstance(err, SealError):
                raise
            raise SealError("ledger-history", str(err)) from None


def publish_keys(
    run_dir: Path, signers: Mapping[str, Ed25519PublicKey], server_verify_key: Path
) -> None:
    """Write the public keys the report checks this run with into the run folder."""
    (Path(run_dir) / REGISTERED_DIR).mkdir(parents=True, exist_ok=True)
    for node, key in sorted(signers.items()):
        publish_key(run_dir, node, key)
    target = Path(run_dir) / SERVER_KEY_FILE
    if Path(server_verify_key).resolve() != target.resolve():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(server_verify_key, target)


def publish_key(run_dir: Path, node: str, key: Ed25519PublicKey) -> None:
    """One registered node's key into ``RUN_DIR/registered-keys`` (a virtual node made during
    the run is published when the server first reads its key)."""
    if is_node_name(node):
        save_public_key(
            key, Path(run_dir) / REGISTERED_DIR / f"{node}{REGISTERED_SUFFIX}", force=True
        )
