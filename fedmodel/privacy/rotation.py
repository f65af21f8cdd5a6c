"""Rotating a node's ledger signing key without resetting what it has spent.

A leaked or expiring key must be replaceable, but a fresh key with a fresh ledger would start
the site's epsilon at zero. Rotation is therefore a ledger entry: signed by the old key, naming
the new one (``rotate_to``) and carrying the cumulative history, after which only the new key
signs (:mod:`fedmodel.crypto.chain` follows the hand-over when verifying from the first key).

Crash safety, in this order: the new key is written to ``<key>.next`` (0600); the rotation entry
is appended (the ledger now needs the new key); the old key moves to ``<key>.retired-<time>``
and ``.next`` takes its name. A crash between the last two steps leaves a ledger that names the
``.next`` key, and opening it with the old one says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from fedmodel.crypto.keys import (
    fingerprint,
    generate_signing_key,
    load_signing_key,
    public_path,
    save_signing_key,
)
from fedmodel.privacy.ledger import Ledger, LedgerError


@dataclass(frozen=True)
class Rotation:
    entry_seq: int
    new_fingerprint: str
    retired: Path
    public: Path


def rotate_signing_key(key_path: Path, ledger_dir: Path, mark: Path | None) -> Rotation:
    key_path = Path(key_path)
    old = load_signing_key(key_path)
    ledger = Ledger(ledger_dir, old, mark=mark)
    if ledger.node is None:
        raise LedgerError(f"{ledger_dir}: empty ledger; a new node can simply use a new key")
    staged = key_path.with_name(key_path.name + ".next")
    new = generate_signing_key()
    save_signing_key(new, staged, force=True)
    entry = ledger.rotate(new)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    retired = key_path.with_name(f"{key_path.name}.retired-{stamp}")
    os.replace(key_path, retired)
    os.replace(public_path(key_path), public_path(retired))
    os.replace(staged, key_path)
    os.replace(public_path(staged), public_path(key_path))
    return Rotation(entry.seq, fingerprint(new), retired, public_path(key_path))
