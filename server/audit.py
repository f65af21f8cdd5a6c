"""The run's audit log: what the server decided, signed as it happened (``RUN_DIR/audit.jsonl``).

Every entry is one :class:`fedmodel.crypto.chain.SignedChain` line signed with the server's
Ed25519 key (the key that signs the global model), so the log shares the chain's guarantees: an
edited, removed or reordered entry breaks verification at that entry. Events, in order:

* ``run-start``: config hash, code version, transport, strategy, the server's key fingerprints
  and the registered node keys (a resumed run starts again with ``resumed_at``);
* ``update`` (``outcome`` accepted/rejected with the reason), ``refusal``, ``error``: one per
  client reply, with the sender the records name;
* ``round``: the server's evaluation and counts after aggregation; ``checkpoint``: the file and
  its SHA-256; ``run-end``: the final model hash.

Cost: the chain rewrites and re-verifies the file on every append (crash safety, see chain.py),
so a run pays O(entries) per append: about clients + 2 entries a round, fine for hundreds of
rounds of tens of clients.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from fedmodel.crypto.chain import (
    ChainBreak,
    ChainEntry,
    ChainError,
    SignedChain,
    VerifiedPrefix,
    resolve_verify_key,
    verify_chain,
)
from fedmodel.crypto.keys import fingerprint
from fedmodel.errors import FedmodelError

AUDIT_FILE = "audit.jsonl"
DEFAULT_KEY = Path("server-keys") / "server.ed25519.pub"  # relative to the run folder

# event -> fields its body must have (besides "event", "run_id", "time")
EVENT_FIELDS: dict[str, frozenset[str]] = {
    "run-start": frozenset({"config_hash", "code_version", "engine", "transport", "strategy"}),
    "node-registered": frozenset({"node", "fingerprint"}),
    "update": frozenset({"round", "node", "outcome", "reason"}),
    "refusal": frozenset({"round", "node", "reason"}),
    "error": frozenset({"round", "node", "reason"}),
    "round": frozenset({"round", "server", "counts"}),
    "checkpoint": frozenset({"round", "path", "sha256"}),
    "run-end": frozenset({"model_hash"}),
}
_ROW_EVENTS = {"ok": "update", "rejected": "update", "refused": "refusal", "error": "error"}


class AuditError(FedmodelError):
    """The audit log cannot be read or verified as asked (missing file, wrong key file)."""


class AuditLog:
    """Appends the server's decisions for one run to ``RUN_DIR/audit.jsonl``."""

    def __init__(self, run_dir: Path, signing_key: ed25519.Ed25519PrivateKey, run_id: str):
        self.path = Path(run_dir) / AUDIT_FILE
        self.run_id = run_id
        self._chain = SignedChain(self.path, signing_key)
        self._registered: list[dict[str, Any]] = []

    def node_registered(self, node: str, key: ed25519.Ed25519PublicKey) -> None:
        """A virtual node whose key the server first read after run start (nodes are made on
        first use in a large simulation). Kept until the next write, so a round with a thousand
        new nodes is one append, not a thousand re-verifications of the log."""
        self._registered.append(
            self._body("node-registered", node=node, fingerprint=fingerprint(key))
        )

    def run_started(self, **fields: Any) -> None:
        self._append("run-start", **fields)

    def client_rows(self, rnd: int, rows: Sequence[Mapping[str, Any]]) -> None:
        """One entry per reply: accepted or rejected update, refusal, or error.

        A round's entries go to disk in one write: appending them one by one re-read and
        re-verified the whole log per reply, quadratic in a run's replies (a thousand sites a
        round would mean millions of signature checks)."""
        bodies = []
        for row in rows:
            status = str(row.get("status"))
            event = _ROW_EVENTS.get(status, "error")
            fields = {"round": rnd, "node": row.get("node"), "reason": row.get("reason")}
            if event == "update":
                fields["outcome"] = "accepted" if status == "ok" else "rejected"
                fields.update(
                    {k: row[k] for k in ("message_id", "num_examples", "partition_id") if k in row}
                )
            bodies.append(self._body(event, **fields))
        self._write(bodies)

    def round_finished(
        self, rnd: int, server: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], **extra: Any
    ) -> None:
        counts = Counter(str(r.get("status")) for r in rows)
        self._append("round", round=rnd, server=dict(server), counts=dict(counts), **extra)

    def checkpoint(self, rnd: int, path: Path, sha256: str) -> None:
        rel = os.path.relpath(path, self.path.parent)
        self._append("checkpoint", round=rnd, path=rel, sha256=sha256)

    def run_finished(
        self, model_hash: str | None, status: str = "finished", reason: str | None = None
    ) -> None:
        """``status`` "failed" (no model exported, ``model_hash`` None) says why in ``reason``."""
        extra = {} if status == "finished" else {"status": status, "reason": reason}
        self._append("run-end", model_hash=model_hash, **extra)

    def _append(self, event: str, **fields: Any) -> None:
        self._write([self._body(event, **fields)])

    def _body(self, event: str, **fields: Any) -> dict[str, Any]:
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        return _json_safe({"event": event, "run_id": self.run_id, "time": now, **fields})

    def _write(self, bodies: Sequence[Mapping[str, Any]]) -> None:
        """Append ``bodies`` after any node registrations not yet written (one signed write)."""
        pending, self._registered = self._registered, []
        try:
            self._chain.append_all_with(lambda _entries: [*pending, *bodies])
        except ChainError as err:
            raise AuditError(str(err)) from None


def _json_safe(value: Any) -> Any:
    """The chain refuses NaN/Infinity (not JSON); an unbounded epsilon is recorded as "inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


# --- verification ----------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditReport(VerifiedPrefix):
    """What verification established: the sound prefix, its counts and the first break."""

    path: Path
    key_source: str
    signer: str
    total: int
    entries: tuple[ChainEntry, ...]
    first_break: ChainBreak | None
    counts: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        c = self.counts
        tally = (
            f"updates accepted {c['accepted']}, rejected {c['rejected']}; refusals "
            f"{c['refused']}; errors {c['errors']}; rounds {c['rounds']}; "
            f"checkpoints {c['checkpoints']}"
        )
        if self.ok:
            return f"{self.path}: {self.total} entries, sound (signer {self.signer[:16]}…); {tally}"
        assert self.first_break is not None
        return (
            f"{self.path}: BROKEN at {self.first_break.describe()}; "
            f"{len(self.entries)} of {self.total} entries verified before it ({tally})"
        )


def verify_audit(
    path: str | os.PathLike[str], public_key: ed25519.Ed25519PublicKey | Path | None = None
) -> AuditReport:
    """Verify ``path`` (a run folder or its audit.jsonl); bad input raises :class:`AuditError`.

    Without a key, the run folder's ``server-keys/server.ed25519.pub`` is used (the public half
    the ServerApp copied there; no private half is kept in a deployment's run folder): that
    proves the log is self-consistent, not who wrote it; pass the key the coordinator published.
    """
    file = _audit_file(Path(path))
    key, source = resolve_verify_key(
        public_key,
        file.parent / DEFAULT_KEY,
        "run folder's server-keys",
        AuditError,
        "pass the server's published verify key (fedmodel audit verify --key, "
        "fedmodel report --server-key)",
    )
    try:
        chain = verify_chain(file, key)
    except ChainError as err:
        raise AuditError(str(err)) from None
    entries, body_break = _sound_bodies(chain.entries)
    return AuditReport(
        path=file,
        key_source=source,
        signer=fingerprint(key),
        total=chain.total,
        entries=entries,
        first_break=body_break or chain.first_break,
        counts=count_events(entries),
    )


def count_events(entries: Sequence[ChainEntry]) -> dict[str, int]:
    bodies = [e.body for e in entries]
    updates = Counter(b.get("outcome") for b in bodies if b["event"] == "update")
    events = Counter(b["event"] for b in bodies)
    return {
        "accepted": updates["accepted"],
        "rejected": updates["rejected"],
        "refused": events["refusal"],
        "errors": events["error"],
        "rounds": events["round"],
        "checkpoints": events["checkpoint"],
    }


def _sound_bodies(
    entries: Sequence[ChainEntry],
) -> tuple[tuple[ChainEntry, ...], ChainBreak | None]:
    """Entries up to the first body that is not an audit event this version knows."""
    for index, entry in enumerate(entries):
        event = entry.body.get("event")
        if event not in EVENT_FIELDS:
            return tuple(entries[:index]), ChainBreak(index, "bad-body", f"unknown event {event!r}")
        missing = EVENT_FIELDS[event] - set(entry.body)
        if missing:
            detail = f"{event} entry lacks {', '.join(sorted(missing))}"
            return tuple(entries[:index]), ChainBreak(index, "bad-body", detail)
    return tuple(entries), None


def _audit_file(path: Path) -> Path:
    file = path / AUDIT_FILE if path.is_dir() else path
    if not file.is_file():
        raise AuditError(f"{file}: no such audit log")
    return file
