"""A site's ledger as its coordinator holds it: the signed entries each reply carries.

Every reply (an update, an evaluation release, a refusal) carries the site's ledger entries
appended since the last one the server holds for it, as the stored lines, signed by the site and
never re-signed (:class:`LedgerSuffix`). The server names in each signed request the head it
holds (``ledger-held``); a site whose ledger no longer contains that head was rolled back and
stops. The server appends a suffix to its copy, ``RUN_DIR/ledgers/<node>/ledger.jsonl``, only if
the result is one sound chain from the site's first entry, signed by keys that end in the site's
registered key, ending exactly at the head the reply reports (:func:`extend_copy`); anything else
(a rewritten entry, a gap, a splice, another key) is refused, so the copy only ever grows by
entries the site signed. ``fedmodel report RUN_DIR`` then verifies each site from the run folder
alone: caps and policies are the signed ``policy`` entries in the copy.

What leaves a site this way is what its ledger says: privacy spends, refusals, commits and its
signed cap and policy; configuration and accounting, never a record. The copy of a run ends at
the last reply's head: the ``commit`` of the last spend is written after the reply left, so only
the site's own ledger (``fedmodel report --ledgers``) holds it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from fedmodel.crypto.chain import ChainHead, head_of
from fedmodel.crypto.keys import KeyFileError, load_verify_key, save_public_key
from fedmodel.errors import FedmodelError
from fedmodel.privacy.highwater import LedgerRollback
from fedmodel.privacy.ledger import (
    LEDGER_FILE,
    SIGNER_FILE,
    Ledger,
    LedgerEntry,
    LedgerError,
    verify_ledger,
)

COPIES_DIR = "ledgers"  # RUN_DIR/ledgers/<node>/{ledger.jsonl, signer.pub}
MAX_SUFFIX_BYTES = 4 * 1024 * 1024  # ~6,000 entries: a site's whole history, first reply
_INCOMING = ".incoming.jsonl"


class LedgerCopyError(FedmodelError):
    """A reply's ledger entries cannot extend the copy the server holds (the reason says why)."""


@dataclass(frozen=True)
class LedgerSuffix:
    """The entries a site sends: its stored lines after the first ``after`` entries.

    ``first_key`` (raw Ed25519, hex) is the key the ledger's first entry is signed with; it is
    sent with a suffix from the start, so a ledger whose key was rotated since still verifies
    (the server accepts it only if the rotations end in the site's registered key).
    """

    after: int
    lines: tuple[str, ...]
    first_key: str | None = None

    def encode(self) -> bytes:
        body = {"after": self.after, "lines": list(self.lines), "first_key": self.first_key}
        return json.dumps(body, separators=(",", ":")).encode("utf-8")

    @classmethod
    def decode(cls, data: bytes | str | None) -> LedgerSuffix:
        """Parse what a reply carries; anything else is a :class:`LedgerCopyError`."""
        if not data:
            raise LedgerCopyError("the reply carries no ledger entries")
        if len(data) > MAX_SUFFIX_BYTES:
            raise LedgerCopyError(f"ledger entries of {len(data)} bytes exceed {MAX_SUFFIX_BYTES}")
        try:
            body = json.loads(data)
            after, lines, first = body["after"], body["lines"], body.get("first_key")
        except (ValueError, TypeError, KeyError, UnicodeDecodeError):
            raise LedgerCopyError("the reply's ledger entries are not readable") from None
        if not (_count(after) and isinstance(lines, list) and all(_line(x) for x in lines)):
            raise LedgerCopyError("the reply's ledger entries are malformed")
        if first is not None and not isinstance(first, str):
            raise LedgerCopyError("the reply's ledger first key is malformed")
        return cls(int(after), tuple(lines), first)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _line(value: Any) -> bool:
    return isinstance(value, str) and "\n" not in value


# --- the site's side -----------------------------------------------------------------------------


def parse_head(value: Any) -> ChainHead | None:
    """A head named in a signed request (``{"hash", "count"}``), ``None`` when none is named."""
    if not isinstance(value, dict):
        return None
    count, digest = value.get("count"), value.get("hash")
    if not _count(count) or not isinstance(digest, str):
        raise LedgerError(f"malformed ledger head in the request: {value!r}")
    return ChainHead(digest, int(count))


def check_holds(entries: Sequence[LedgerEntry], head: ChainHead | None, path: Path) -> None:
    """The coordinator's record of this ledger must still be in it: a ledger rolled back with
    its high-water mark (a restored backup of the whole node folder) stops here."""
    if head is None or head.count == 0:
        return
    if head.count > len(entries) or entries[head.count - 1].hash != head.hash:
        raise LedgerRollback(
            f"{path}: the coordinator last saw this ledger at {head.count} entries "
            f"(head {head.hash[:16]}…), which it does not contain: restore the ledger that "
            "reached that head"
        )


def suffix_for(ledger: Ledger, held: ChainHead | None, upto: int) -> LedgerSuffix:
    """The entries after ``held`` up to entry count ``upto`` (the head this reply reports)."""
    entries = ledger.entries()
    check_holds(entries, held, ledger.path)
    start = held.count if held is not None else 0
    if upto > len(entries) or upto < start:
        raise LedgerError(f"{ledger.path}: no entries {start}..{upto} to send")
    lines = tuple(ledger.signed_lines(start, upto))
    first = ledger.first_key.public_bytes_raw().hex() if start == 0 else None
    return LedgerSuffix(start, lines, first)


# --- the server's side ---------------------------------------------------------------------------


def held_head(directory: Path) -> ChainHead:
    """Head of the copy in ``directory`` (an empty chain when there is none yet)."""
    file = Path(directory) / LEDGER_FILE
    if not file.is_file():
        return head_of(())
    return verify_ledger(file, _copy_first_key(Path(directory))).head


def extend_copy(
    directory: Path,
    node: str,
    suffix: LedgerSuffix,
    registered: ed25519.Ed25519PublicKey,
    reported: ChainHead,
) -> ChainHead:
    """Append ``suffix`` to the copy in ``directory`` if the result verifies; return its head.

    The candidate (held entries up to ``suffix.after``, then the suffix) must verify as one
    ledger of ``node`` from its first key, still hold the head the copy had (so a suffix that
    overlaps what is held must repeat it exactly), end at ``reported``, and be signed, after its
    rotations, by ``registered``. Only then does it replace the copy (an atomic rename).
    """
    directory = Path(directory)
    file = directory / LEDGER_FILE
    held = _lines(file)
    if suffix.after > len(held):
        raise LedgerCopyError(
            f"the entries start after entry {suffix.after}, the run folder holds {len(held)}"
        )
    first = _first_key_for(directory, suffix, registered)
    held_now = held_head(directory) if held else None
    candidate = directory / _INCOMING
    directory.mkdir(parents=True, exist_ok=True)
    data = b"".join(line + b"\n" for line in held[: suffix.after])
    data += b"".join(line.encode("utf-8") + b"\n" for line in suffix.lines)
    candidate.write_bytes(data)
    try:
        _check_candidate(candidate, node, first, registered, held_now, reported)
    except BaseException:
        candidate.unlink(missing_ok=True)
        raise
    os.replace(candidate, file)
    if not (directory / SIGNER_FILE).is_file():
        save_public_key(first, directory / SIGNER_FILE)
    return reported


def _check_candidate(
    candidate: Path,
    node: str,
    first: ed25519.Ed25519PublicKey,
    registered: ed25519.Ed25519PublicKey,
    held: ChainHead | None,
    reported: ChainHead,
) -> None:
    heads = [h for h in (held, reported) if h is not None]
    try:
        result = verify_ledger(candidate, first, heads=heads)
    except LedgerError as err:
        raise LedgerCopyError(str(err)) from None
    if not result.ok:
        assert result.first_break is not None
        raise LedgerCopyError(
            f"the entries do not chain onto the {held.count if held else 0} the run folder "
            f"holds: {result.first_break.describe()}"
        )
    if result.node != node:
        raise LedgerCopyError(f"the entries are a ledger of {result.node!r}, not of {node!r}")
    if result.head != reported:
        raise LedgerCopyError(
            f"the entries end at entry {result.head.count}, the reply reports {reported.count}"
        )
    rotations = [e.rotate_to for e in result.entries if e.kind == "rotation"]
    current = rotations[-1] if rotations else first.public_bytes_raw().hex()
    if current != registered.public_bytes_raw().hex():
        raise LedgerCopyError("the entries are signed by another key than the registered one")


def _first_key_for(
    directory: Path, suffix: LedgerSuffix, registered: ed25519.Ed25519PublicKey
) -> ed25519.Ed25519PublicKey:
    """The copy's first key: kept from the first suffix, else the one this suffix names, else
    the registered key (a ledger never rotated)."""
    kept = _copy_first_key(directory)
    if kept is not None:
        return kept
    if suffix.first_key is None:
        return registered
    try:
        return ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(suffix.first_key))
    except ValueError:
        raise LedgerCopyError("the ledger's first key is not a raw Ed25519 key") from None


def _copy_first_key(directory: Path) -> ed25519.Ed25519PublicKey | None:
    path = directory / SIGNER_FILE
    if not path.is_file():
        return None
    try:
        return load_verify_key(path)
    except KeyFileError as err:
        raise LedgerCopyError(str(err)) from None


def _lines(file: Path) -> list[bytes]:
    if not file.is_file():
        return []
    return file.read_bytes().splitlines()
