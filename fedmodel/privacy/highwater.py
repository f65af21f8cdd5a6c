"""A node's signed high-water mark: its ledger can never silently go backwards.

A ledger is a file. Truncating it, deleting it or putting back an older copy would each reset the
epsilon a node believes it has spent, and the chain itself cannot show a cut tail (only the heads
recorded elsewhere can). The mark is that record kept on the node: the entry count and head hash
the ledger has reached, signed with the node's key, in a file *outside* the ledger folder
(``node.toml``'s ``high_water_mark``, by default ``ledger.hwm.json`` beside ``node.toml``). Every
append advances it inside the ledger's lock; every round checks, before anything else, that the
ledger still holds that entry at that position. A shorter, missing or forked ledger stops training
with one line that says what to restore.

What it does not stop: whoever holds the node's private key and can write both files can rewrite
both (the coordinator's recorded heads and ``fedmodel report`` catch that later). What it does stop
is the common, cheap attacks and accidents: a restored backup, a deleted folder, a ``head -n``.

The signature covers ``LABEL || canonical JSON``: a message that starts with a label of its own and
is longer than 32 bytes, so it can never verify as a chain entry (which signs 32-byte digests) or a
sealed update.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from fedmodel.crypto.chain import ChainHead, canonical_json
from fedmodel.crypto.keys import fingerprint
from fedmodel.errors import FedmodelError
from fedmodel.io import atomic_write_json

MARK_FILE = "ledger.hwm.json"
_LABEL = b"fedmodel/ledger-high-water-mark/v1\x00"
_FIELDS = {"node", "count", "head", "signer", "sig"}


class LedgerRollback(FedmodelError):
    """The ledger is behind, missing or forked against its high-water mark: training stops."""


@dataclass(frozen=True)
class HighWaterMark:
    """The furthest point the node's ledger has reached: ``count`` entries ending in ``head``."""

    node: str
    count: int
    head: str

    def body(self) -> dict[str, Any]:
        return {"node": self.node, "count": self.count, "head": self.head}


def write_mark(path: str | os.PathLike[str], key: ed25519.Ed25519PrivateKey, mark: HighWaterMark):
    """Sign and write the mark atomically (mode 0600: it is the node's, not the world's)."""
    body = mark.body()
    signature = key.sign(_LABEL + canonical_json(body).encode("utf-8"))
    record = {
        **body,
        "signer": fingerprint(key),
        "sig": base64.b64encode(signature).decode("ascii"),
    }
    atomic_write_json(path, record, mode=0o600)


def read_mark(path: str | os.PathLike[str], key: ed25519.Ed25519PublicKey) -> HighWaterMark | None:
    """The mark at ``path`` if it verifies under ``key``; ``None`` when there is no file."""
    p = Path(path)
    try:
        record = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise LedgerRollback(f"{p}: unreadable high-water mark ({err})") from None
    if not isinstance(record, dict) or set(record) != _FIELDS:
        raise LedgerRollback(f"{p}: malformed high-water mark (fields {sorted(_FIELDS)})")
    mark = _parse(record, p)
    try:
        signature = base64.b64decode(record["sig"], validate=True)
        key.verify(signature, _LABEL + canonical_json(mark.body()).encode("utf-8"))
    except (InvalidSignature, binascii.Error, ValueError, TypeError):
        raise LedgerRollback(
            f"{p}: high-water mark signature does not verify with the node's key"
        ) from None
    return mark


def check_ledger(
    mark: HighWaterMark | None,
    entries: Sequence[Any],
    *,
    ledger_path: Path,
    mark_path: Path,
) -> None:
    """Raise :class:`LedgerRollback` unless ``entries`` (in chain order) reach ``mark``.

    No mark and no entries: a new node. No mark but entries: the mark was deleted (or the node
    predates marks); refusing is the only safe reading, and the message says how to adopt the
    ledger deliberately.
    """
    if mark is None:
        if entries:
            raise LedgerRollback(
                f"{ledger_path}: {len(entries)} entries but no high-water mark at {mark_path}; "
                "restore the mark from backup, or adopt this ledger as it is with "
                "`fedmodel ledger adopt --config node.toml`"
            )
        return
    where = f"head {mark.head[:16]}…"
    if not entries and mark.count > 0:
        raise LedgerRollback(
            f"{ledger_path}: missing or empty, but the high-water mark {mark_path} says "
            f"{mark.count} entries ({where}); restore the ledger folder from backup"
        )
    if len(entries) < mark.count:
        raise LedgerRollback(
            f"{ledger_path}: only {len(entries)} entries, the high-water mark says "
            f"{mark.count} ({where}); the ledger was cut back: restore it from backup"
        )
    if mark.count and entries[mark.count - 1].hash != mark.head:
        raise LedgerRollback(
            f"{ledger_path}: entry {mark.count - 1} differs from the high-water mark ({where}); "
            "the ledger was forked or replaced: restore the ledger that reached that head"
        )


def mark_of(node: str, head: ChainHead) -> HighWaterMark:
    return HighWaterMark(node=node, count=head.count, head=head.hash)


def _parse(record: dict[str, Any], path: Path) -> HighWaterMark:
    node, count, head = record["node"], record["count"], record["head"]
    ok = (
        isinstance(node, str)
        and isinstance(count, int)
        and not isinstance(count, bool)
        and count >= 0
        and isinstance(head, str)
        and len(head) == 64
    )
    if not ok:
        raise LedgerRollback(f"{path}: malformed high-water mark values")
    return HighWaterMark(node=node, count=count, head=head)
