"""What the relay kept: every byte of the SuperLink's state folder, searched for plaintext.

Flower's SuperLink deletes delivered messages from its SQLite tables, but SQLite leaves their
pages in the database and its write-ahead log, so a raw scan still finds what passed through
(the positive controls below prove it on the same files). A sealed run must leave envelopes
there and nothing that only a decrypted payload contains.
"""

from __future__ import annotations

import json
from pathlib import Path

from server import wire

ENVELOPE_MAGIC = b"FMSU\x01"
SIGNED_REQUEST_MAGIC = b"FMRQ\x01"
# the safetensors header of a decrypted payload (the bare name is also in the app's source,
# which the SuperLink stores with the run)
PAYLOAD_MARKER = b'"' + wire.REPLY_TENSOR.encode() + b'":{"dtype":"U8"'


def relay_bytes(state_dir: Path) -> bytes:
    """The SuperLink's database, WAL and shared memory, concatenated."""
    return b"".join(p.read_bytes() for p in sorted(Path(state_dir).glob("state.db*")))


def ledger_hashes(run_dir: Path) -> list[bytes]:
    """The ledger head each client reported per round: inside the payload when sealed."""
    hashes = []
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        for client in json.loads(line)["clients"]:
            if client["status"] == "ok":
                hashes.append(client["ledger_head"]["hash"].encode())
    return hashes


def assert_relay_never_saw_plaintext(state_dir: Path, sealed_run: Path, plain_run: Path) -> None:
    blob = relay_bytes(state_dir)
    plain, sealed = ledger_hashes(plain_run), ledger_hashes(sealed_run)
    assert plain and sealed
    # positive controls: the scan sees the plain run's payloads (signed, readable), and the
    # sealed run's traffic
    assert all(h in blob for h in plain), "scan is blind: plain replies not found"
    assert PAYLOAD_MARKER in blob, "scan is blind: no plain payload found"
    assert ENVELOPE_MAGIC in blob and SIGNED_REQUEST_MAGIC in blob
    # what only the sealed run's decrypted payloads hold never reached the relay
    assert not any(h in blob for h in sealed)
