"""The client's privacy ledger: the signed, append-only record of every DP round it trained.

A Flower ClientApp lives for one message, so the node's disk, not memory, must remember what it
has spent. The ledger is a :mod:`fedmodel.crypto.chain` file signed with the node's Ed25519 key.
Entry kinds:

* ``round``: a DP-SGD round, written *before* training (the reservation made by
  :mod:`fedmodel.privacy.spend`, the one door that spends): the mechanism parameters, the Opacus
  accountant history it adds, what it releases (``releases``, e.g. the model update and, if the
  site's policy opts in, its noised training metrics), and the cumulative epsilon by PRV and RDP
  over the *whole* ledger history (every run, every round).
* ``release``: any other privacy-costing output (e.g. noised evaluation counts), same fields.
* ``commit``: the reserved spend finished; carries the SHA-256 of what left the node. A spend
  without a commit (a crash mid-round) still counts as spent.
* ``refusal``: the node declined a round (policy, budget, an untrusted request); spends nothing.
* ``policy``: the node's cap and site policy, written whenever either changes, so a report reads
  caps from signatures, never from a loose ``node.toml``.

Directory layout::

    <dir>/ledger.jsonl        the chain, one JSON line per entry
    <dir>/ledger.jsonl.lock   flock target that serialises appenders (empty)
    <dir>/signer.pub          PEM public key of the signing key, written when the ledger is created

``signer.pub`` makes ``fedmodel ledger verify`` work out of the box, but it sits on the same disk
as the ledger, so whoever can rewrite the ledger can replace it. A reviewer should verify with
the key registered with the coordinator (``--key``) and the heads the server recorded
(``--heads``): only those catch a ledger re-signed or cut back by its own node.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric import ed25519

from fedmodel.crypto.chain import (
    ChainBreak,
    ChainEntry,
    ChainError,
    ChainHead,
    SignedChain,
    VerifiedPrefix,
    canonical_json,
    head_of,
    resolve_verify_key,
    rotation_body_field,
    verify_chain,
)
from fedmodel.crypto.keys import KeyFileError, fingerprint, load_verify_key, save_public_key
from fedmodel.errors import FedmodelError
from fedmodel.privacy.accountant import (
    AccountantName,
    AccountingError,
    HistoryEntry,
    grouped_history,
    normalise_history,
)
from fedmodel.privacy.budget import cumulative_epsilon
from fedmodel.privacy.highwater import check_ledger, mark_of, read_mark, write_mark

LEDGER_FILE = "ledger.jsonl"
SIGNER_FILE = "signer.pub"
MECHANISM = "dp-sgd/poisson-gaussian"
NO_DP = "none"  # a round a site's policy let run without noise: no guarantee, epsilon unbounded
EntryKind = Literal["round", "release", "refusal", "commit", "policy", "rotation"]
SPENDING_KINDS = ("round", "release")
LedgerHead = ChainHead  # the architecture's name for what a client reports with every reply
_HEX64 = re.compile(r"[0-9a-f]{64}")

_COMMON = ("kind", "node", "run_id", "round", "time")
_SPEND_FIELDS = (
    *_COMMON,
    *("mechanism", "noise_multiplier", "sample_rate", "steps", "max_grad_norm", "delta"),
    *("dataset_size", "history", "epsilon", "epsilon_rdp"),
)
_BODY_FIELDS: dict[str, tuple[str, ...]] = {
    "round": _SPEND_FIELDS,
    "release": _SPEND_FIELDS,
    "refusal": (*_COMMON, "reason", "projected_epsilon"),
    "commit": (*_COMMON, "spend", "update_sha256"),
    "policy": (*_COMMON, "cap_epsilon", "cap_delta", "policy", "policy_sha256"),
    "rotation": (*_COMMON, "rotate_to", "history"),
}
# Fields a body may carry beyond its kind's own (ledgers written before they existed lack them).
_OPTIONAL_FIELDS: dict[str, tuple[str, ...]] = {"round": ("releases",), "release": ("releases",)}
DEFAULT_RELEASES = ("model-update",)


class LedgerError(FedmodelError):
    """The ledger is broken, belongs to another node or key, or an entry's values are invalid."""


@dataclass(frozen=True)
class LedgerEntry:
    """One parsed ledger entry. Spending fields are ``None`` on refusals; ``epsilon`` (PRV) and
    ``epsilon_rdp`` are cumulative at this entry's ``delta`` and ``None`` where the accountant
    could not bound them."""

    seq: int
    hash: str
    kind: EntryKind
    node: str
    run_id: str
    round: int
    time: str
    mechanism: str | None = None
    noise_multiplier: float | None = None
    sample_rate: float | None = None
    steps: int | None = None
    max_grad_norm: float | None = None
    delta: float | None = None
    dataset_size: int | None = None
    history: tuple[HistoryEntry, ...] = ()
    epsilon: float | None = None
    epsilon_rdp: float | None = None
    reason: str | None = None
    projected_epsilon: float | None = None
    releases: tuple[str, ...] = ()
    spend: str | None = None
    update_sha256: str | None = None
    cap_epsilon: float | None = None
    cap_delta: float | None = None
    policy: dict[str, Any] | None = None
    policy_sha256: str | None = None
    rotate_to: str | None = None

    @property
    def spends(self) -> bool:
        return self.kind in SPENDING_KINDS


@dataclass(frozen=True)
class VerifyReport(VerifiedPrefix):
    """Outcome of :func:`verify_ledger`. ``entries`` is the sound prefix, ``total`` the number of
    lines in the file, ``first_break`` the first broken entry (chain kinds, plus ``bad-body``,
    ``cut-tail`` and ``rewritten`` from the server heads). ``ok`` and ``head`` are the chain's
    (:class:`~fedmodel.crypto.chain.VerifiedPrefix`)."""

    path: Path
    key_source: str
    signer: str
    node: str | None
    entries: tuple[LedgerEntry, ...]
    total: int
    heads_checked: int
    first_break: ChainBreak | None

    def summary(self) -> str:
        """One line for a terminal or a report."""
        what = f"{self.path}: {len(self.entries)} of {self.total} entries sound"
        heads = f", {self.heads_checked} server heads checked" if self.heads_checked else ""
        if self.ok:
            return f"{what}{heads}; head {self.head.hash[:16]}… (key: {self.key_source})"
        return f"{what}{heads}; BROKEN at {self.first_break.describe()}"  # type: ignore[union-attr]


class Ledger:
    """A node's ledger directory, opened with the node's signing key.

    Opening verifies the whole chain and refuses a broken one: appending to it would sign on top
    of a record that can no longer be trusted. Every append re-reads and re-verifies the chain
    under the file lock, so two processes of the same node append in turn, each computing its
    cumulative epsilon over everything the other wrote.

    ``mark`` is the node's high-water mark file (:mod:`fedmodel.privacy.highwater`), kept outside
    the ledger folder. Given one, every read checks the ledger against it and every append
    advances it inside the lock, so a cut, deleted or forked ledger raises
    :class:`~fedmodel.privacy.highwater.LedgerRollback` before anything is decided from it.
    Nodes always pass it; read-only tools (verify, report) do not.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        signing_key: ed25519.Ed25519PrivateKey,
        *,
        node: str | None = None,
        mark: str | os.PathLike[str] | None = None,
    ) -> None:
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise LedgerError(f"{self.directory}: a ledger is a directory, this is a file")
        self.path = self.directory / LEDGER_FILE
        self.mark_path = Path(mark) if mark is not None else None
        try:
            first_key = self._first_key()
            self._chain = SignedChain(self.path, signing_key, first_key=first_key)
        except ChainError as err:
            raise LedgerError(str(err)) from None
        self._signing_key = signing_key
        entries = self.entries()
        self._check_current_key()
        self._write_signer_file()
        self.node = _resolve_node(entries, node, self.path)

    # --- reading ---------------------------------------------------------------------------------

    def entries(self) -> list[LedgerEntry]:
        """All entries, freshly read and verified (another process may have appended), and
        checked against the high-water mark when the ledger has one."""
        try:
            verification = self._chain.verify()
        except ChainError as err:  # unreadable file
            raise LedgerError(str(err)) from None
        if not verification.ok:
            raise LedgerError(_broken_message(self.path, verification.first_break))
        entries = _parse_verified(verification.entries, self.path)
        self._check_mark(entries)
        return entries

    def adopt_mark(self, mark: str | os.PathLike[str]) -> ChainHead:
        """Write the high-water mark for the ledger as it is now (``fedmodel ledger adopt``).

        Only where no mark exists yet: adopting is a deliberate statement by the site, with its
        key, that this ledger is complete.
        """
        path = Path(mark)
        with self._chain.locked():
            verification = self._chain.verify()
            if not verification.ok:
                raise LedgerError(_broken_message(self.path, verification.first_break))
            if read_mark(path, self._chain.public_key) is not None:
                raise LedgerError(f"{path}: a high-water mark exists already")
            head = verification.head
            write_mark(path, self._signing_key, mark_of(self._node_or_blank(), head))
        return head

    def _node_or_blank(self) -> str:
        return getattr(self, "node", None) or ""

    def _check_mark(self, entries: list[LedgerEntry]) -> None:
        if self.mark_path is None:
            return
        mark = read_mark(self.mark_path, self._chain.public_key)
        check_ledger(mark, entries, ledger_path=self.path, mark_path=self.mark_path)

    def latest_policy(self) -> LedgerEntry | None:
        """The last ``policy`` entry: the cap and policy the node signed most recently."""
        return next((e for e in reversed(self.entries()) if e.kind == "policy"), None)

    def history(self) -> list[HistoryEntry]:
        """The Opacus history of every spending entry, all runs, in ledger order."""
        return _history_of(self.entries())

    def epsilon(self, delta: float, accountant: AccountantName = "prv") -> float:
        """Cumulative epsilon spent so far at ``delta`` (``inf`` when it cannot be bounded)."""
        entries = self.entries()
        if unbounded(entries):
            return math.inf
        return cumulative_epsilon(_history_of(entries), delta, accountant)

    def head(self) -> ChainHead:
        """Head of the verified ledger: what the client sends with every reply."""
        return head_of(self.entries())

    def signed_line(self, entry_hash: str) -> str:
        """The stored, signed line of one verified entry: a refusal travels to the server as it
        is, so the server can check the node's signature on it (``server/sealing.py``)."""
        for entry in self._verified_chain():
            if entry.hash == entry_hash:
                return entry.to_line()
        raise LedgerError(f"{self.path}: no sound entry with hash {entry_hash[:16]}…")

    def signed_lines(self, start: int, stop: int) -> list[str]:
        """The stored, signed lines of entries ``start`` to ``stop - 1``, as they are: what a
        reply carries to the coordinator's copy (:mod:`fedmodel.privacy.ledger_copy`)."""
        return [entry.to_line() for entry in self._verified_chain()[start:stop]]

    @property
    def first_key(self) -> ed25519.Ed25519PublicKey:
        """The key the ledger's first entry is signed with (later keys come by rotation)."""
        return self._chain.first_key

    def _verified_chain(self) -> tuple[ChainEntry, ...]:
        try:
            verification = self._chain.verify()
        except ChainError as err:
            raise LedgerError(str(err)) from None
        if not verification.ok:
            raise LedgerError(_broken_message(self.path, verification.first_break))
        return verification.entries

    # --- writing ---------------------------------------------------------------------------------

    def append_round(
        self,
        run_id: str,
        round: int,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        max_grad_norm: float,
        delta: float,
        dataset_size: int,
        accountant_history_added: Iterable[Sequence[float]] | None = None,
    ) -> LedgerEntry:
        """Record one trained round and the cumulative epsilon over the whole history.

        A primitive without any decision (no cap, no duplicate check): nodes spend only through
        :func:`fedmodel.privacy.spend.reserve`; this serves tools and tests that build ledgers.
        ``accountant_history_added`` is what training added to the Opacus accountant
        (``TrainResult.history``); it is the source of truth for accounting and must add up to
        ``steps``. When omitted, the round is one homogeneous stretch
        ``(noise_multiplier, sample_rate, steps)``.
        """
        body = self.spend_body(
            "round", run_id, round,
            noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps,
            max_grad_norm=max_grad_norm, delta=delta, dataset_size=dataset_size,
            history=accountant_history_added,
        )  # fmt: skip
        return self._append(body)

    def spend_body(
        self,
        kind: Literal["round", "release"],
        run_id: str,
        round: int,
        *,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        max_grad_norm: float,
        delta: float,
        dataset_size: int,
        history: Iterable[Sequence[float]] | None = None,
        releases: Sequence[str] = DEFAULT_RELEASES,
        mechanism: str = MECHANISM,
    ) -> Callable[[list[LedgerEntry]], dict[str, Any]]:
        """The body of a spending entry, as a function of the entries before it.

        Values are validated now, before anything is signed; the cumulative epsilon is computed
        inside the lock from the entries the append really follows. ``history`` is the Opacus
        history the spend adds (DP-SGD steps, and a Gaussian release as ``(sigma, 1.0, 1)``);
        it must add up to ``steps``.
        """
        if mechanism == NO_DP:  # nothing to account: the entry itself makes epsilon unbounded
            noise_multiplier, history = 1.0, []
        added = _validated_round(
            noise_multiplier, sample_rate, steps, max_grad_norm, delta, dataset_size, history,
            check_steps=mechanism != NO_DP,
        )  # fmt: skip
        if mechanism == NO_DP:
            noise_multiplier = 0.0
        if not releases or not all(isinstance(r, str) and r for r in releases):
            raise LedgerError("a spend must name what it releases")
        fixed = {
            **self._common(kind, run_id, round),
            "mechanism": mechanism,
            "noise_multiplier": float(noise_multiplier),
            "sample_rate": float(sample_rate),
            "steps": int(steps),
            "max_grad_norm": float(max_grad_norm),
            "delta": float(delta),
            "dataset_size": int(dataset_size),
            "history": [list(h) for h in added],
            "releases": list(releases),
        }

        def body(entries: list[LedgerEntry]) -> dict[str, Any]:
            if mechanism == NO_DP or unbounded(entries):
                return {**fixed, "epsilon": None, "epsilon_rdp": None}
            whole = [*_history_of(entries), *added]
            return {
                **fixed,
                "epsilon": _finite_or_none(cumulative_epsilon(whole, delta, "prv")),
                "epsilon_rdp": _finite_or_none(cumulative_epsilon(whole, delta, "rdp")),
            }

        return body

    def append_refusal(
        self, run_id: str, round: int, reason: str, projected_epsilon: float | None
    ) -> LedgerEntry:
        """Record that the node refused a round (budget, policy); spends nothing."""
        body = self.refusal_body(run_id, round, reason, projected_epsilon)
        return self._append(lambda _entries: body)

    def refusal_body(
        self, run_id: str, round: int, reason: str, projected_epsilon: float | None
    ) -> dict[str, Any]:
        if not isinstance(reason, str) or not reason.strip():
            raise LedgerError("a refusal needs a reason")
        if projected_epsilon is not None and not _is_real(projected_epsilon):
            raise LedgerError(f"projected_epsilon {projected_epsilon!r} must be a number or None")
        return {
            **self._common("refusal", run_id, round),
            "reason": reason,
            "projected_epsilon": (
                None if projected_epsilon is None else _finite_or_none(float(projected_epsilon))
            ),
        }

    def append_commit(self, spend: LedgerEntry, update_sha256: str | None) -> LedgerEntry:
        """Close a reserved spend: what left the node (its SHA-256), or ``None`` if nothing did."""
        if not spend.spends:
            raise LedgerError(f"entry {spend.seq} is a {spend.kind}, not a spend to commit")
        if update_sha256 is not None and not _HEX64.fullmatch(update_sha256):
            raise LedgerError("update_sha256 must be 64 lowercase hex digits or None")
        body = {
            **self._common("commit", spend.run_id, spend.round),
            "spend": spend.hash,
            "update_sha256": update_sha256,
        }
        return self._append(lambda _entries: body)

    def policy_body(
        self, run_id: str, round: int, cap: tuple[float, float] | None, policy: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """A ``policy`` entry's body for the node's current cap and policy.

        Written inside a spend transaction (:mod:`fedmodel.privacy.spend`) whenever
        ``node.toml``'s cap or policy differs from the last signed one, so every change a site
        makes is signed before the next round is decided under it.
        """
        normal = json.loads(canonical_json(dict(policy)))
        digest = hashlib.sha256(canonical_json(normal).encode("utf-8")).hexdigest()
        return {
            **self._common("policy", run_id, round),
            "cap_epsilon": None if cap is None else float(cap[0]),
            "cap_delta": None if cap is None else float(cap[1]),
            "policy": normal,
            "policy_sha256": digest,
        }

    def append_decided(
        self, decide: Callable[[list[LedgerEntry]], Sequence[Mapping[str, Any]]]
    ) -> list[LedgerEntry]:
        """Append the bodies ``decide(entries)`` returns, in order, inside one hold of the lock.

        The one primitive a transaction needs: the decision (budget, duplicates, cap) is made on
        the entries the appends really follow, and no other writer can come between them. The
        bodies go to disk in one durable write with one high-water mark after it.
        """
        with self._chain.locked():
            entries = self.entries()
            _resolve_node(entries, self.node, self.path)
            bodies = list(decide(entries))
            return self._append_locked(lambda _entries: bodies) if bodies else []

    def _common(self, kind: EntryKind, run_id: str, round: int) -> dict[str, Any]:
        if self.node is None:
            raise LedgerError(f"{self.path}: new ledger needs the node name (Ledger(..., node=))")
        if not isinstance(run_id, str) or not run_id:
            raise LedgerError("run_id must be a non-empty string")
        if not _is_int(round) or round < 0:
            raise LedgerError(f"round {round!r} must be an integer >= 0")
        return {"kind": kind, "node": self.node, "run_id": run_id, "round": int(round)}

    def _append(self, make_body: Callable[[list[LedgerEntry]], Mapping[str, Any]]) -> LedgerEntry:
        with self._chain.locked():
            return self._append_locked(lambda entries: [make_body(entries)])[-1]

    def _append_locked(
        self,
        make_bodies: Callable[[list[LedgerEntry]], Sequence[Mapping[str, Any]]],
        mark_key: ed25519.Ed25519PrivateKey | None = None,
    ) -> list[LedgerEntry]:
        """Append (the caller holds the lock) in one durable write: the bodies see every entry
        written so far, by any process, and are stamped there, so times never run backwards
        along the chain; the high-water mark is checked before and advanced once after, under
        the same lock."""

        def stamped(chain_entries: tuple[ChainEntry, ...]) -> list[dict[str, Any]]:
            entries = _parse_verified(chain_entries, self.path)
            _resolve_node(entries, self.node, self.path)  # another process may have started it
            self._check_mark(entries)
            now = datetime.now(UTC).isoformat(timespec="milliseconds")
            return [{**body, "time": now} for body in make_bodies(entries)]

        try:
            written = self._chain.append_all_with(stamped, lock=False)
        except ChainError as err:
            raise LedgerError(str(err)) from None
        assert written
        if self.mark_path is not None:  # signed by whoever signs the next entry
            last = written[-1]
            key = mark_key or self._signing_key
            write_mark(
                self.mark_path, key, mark_of(str(self.node), ChainHead(last.hash, last.seq + 1))
            )
        return [_to_ledger_entry(entry) for entry in written]

    def _first_key(self) -> ed25519.Ed25519PublicKey | None:
        """The key of the ledger's first entry (``signer.pub``); later keys come by rotation."""
        path = self.directory / SIGNER_FILE
        if not path.exists():
            return None
        try:
            return load_verify_key(path)
        except KeyFileError as err:
            raise LedgerError(str(err)) from None

    def _check_current_key(self) -> None:
        """Refuse to open a ledger with a key other than its current one: the likeliest mistake
        is opening a node's ledger with another node's key (or with a key a rotation retired),
        and this names it better than a bad signature later."""
        verification = self._chain.verify()
        mine = fingerprint(self._chain.public_key)
        if verification.active_signer == mine:
            return
        first = fingerprint(self._chain.first_key)
        if verification.active_signer == first:
            raise LedgerError(
                f"{self.directory / SIGNER_FILE}: this ledger was created by key {first[:16]}…, "
                f"opened with key {mine[:16]}…"
            )
        raise LedgerError(
            f"{self.path}: the ledger's current key (after rotation) is "
            f"{verification.active_signer[:16]}…, opened with key {mine[:16]}…"
        )

    def rotate(self, new_key: ed25519.Ed25519PrivateKey) -> LedgerEntry:
        """Hand the ledger to ``new_key``: a ``rotation`` entry, signed by the current key, that
        names the new key and carries the cumulative history, so a new key never resets epsilon.

        Every later entry must be signed by ``new_key`` (open the ledger with it afterwards);
        the high-water mark is signed by it in the same write, so a crash leaves a ledger and a
        mark that both name the new key.
        """
        if self.node is None:
            raise LedgerError(f"{self.path}: an empty ledger has nothing to rotate; use the key")
        with self._chain.locked():
            carried = grouped_history(self.history())
            body = {
                **self._common("rotation", "key-rotation", 0),
                **rotation_body_field(new_key.public_key()),
                "history": [list(h) for h in carried],
            }
            return self._append_locked(lambda _entries: [body], mark_key=new_key)[-1]

    def _write_signer_file(self) -> None:
        """Write ``signer.pub`` once, after the chain verified with this key (or is empty)."""
        path = self.directory / SIGNER_FILE
        with self._chain.locked():
            if not path.exists():
                save_public_key(self._chain.public_key, path)


def verify_ledger(
    path: str | os.PathLike[str],
    public_key: ed25519.Ed25519PublicKey | str | os.PathLike[str] | None = None,
    heads: Iterable[Mapping[str, Any] | ChainHead] | None = None,
) -> VerifyReport:
    """Verify chain, signatures, entry bodies and, given the server's recorded heads, the tail.

    ``path`` is a ledger directory or its ``ledger.jsonl``. ``public_key`` is a key, a PEM/OpenSSH
    public key file, or ``None`` for the ledger's own ``signer.pub`` (convenient, not
    independent). Each head ``{"hash", "count"}`` says the ledger once had ``count`` entries ending
    in ``hash``: a shorter ledger was cut (``cut-tail``), a different hash there was
    ``rewritten``. Bad input raises :class:`LedgerError`; a broken ledger is a report.
    """
    file = _ledger_file(path)
    key, key_source = resolve_verify_key(
        public_key,
        file.parent / SIGNER_FILE,
        "ledger's own signer.pub",
        LedgerError,
        "pass the node's registered key with --key",
    )
    recorded = [_as_head(h) for h in heads or ()]
    try:
        chain = verify_chain(file, key)
    except ChainError as err:
        raise LedgerError(str(err)) from None
    entries, body_break = _parse_prefix(chain.entries)
    chain_break = body_break or chain.first_break
    breaks = [b for b in [chain_break] if b is not None]
    breaks += _head_breaks(entries, recorded, sound=chain_break is None)
    return VerifyReport(
        path=file,
        key_source=key_source,
        signer=fingerprint(key),
        node=entries[0].node if entries else None,
        entries=tuple(entries),
        total=chain.total,
        heads_checked=len(recorded),
        first_break=min(breaks, key=lambda b: b.index) if breaks else None,
    )


def server_heads(run_dir: str | os.PathLike[str], node: str) -> list[ChainHead]:
    """The ledger heads a run's server recorded for ``node`` (``RUN_DIR/metrics.jsonl``)."""
    metrics = Path(run_dir) / "metrics.jsonl"
    if not metrics.is_file():
        raise LedgerError(f"{metrics}: no such file (is {run_dir} a run folder?)")
    found: list[ChainHead] = []
    for lineno, line in enumerate(metrics.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            clients = record.get("clients") or []
            found += [_as_head(c["ledger_head"]) for c in clients if _reports_head(c, node)]
        except (ValueError, AttributeError, TypeError, LedgerError) as err:
            raise LedgerError(f"{metrics}:{lineno}: malformed metrics line ({err})") from None
    return found


# --- helpers -------------------------------------------------------------------------------------


def _reports_head(client: Mapping[str, Any], node: str) -> bool:
    return client.get("node") == node and client.get("ledger_head") is not None


def _ledger_file(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    file = p / LEDGER_FILE if p.is_dir() else p
    if not file.is_file():
        raise LedgerError(f"{file}: no such ledger file")
    return file


def _as_head(head: Mapping[str, Any] | ChainHead) -> ChainHead:
    if isinstance(head, ChainHead):
        return head
    try:
        value, count = head["hash"], head["count"]
    except (KeyError, TypeError):
        raise LedgerError(f"ledger head {head!r}: expected {{'hash', 'count'}}") from None
    if not (isinstance(value, str) and _HEX64.fullmatch(value) and _is_int(count) and count >= 0):
        raise LedgerError(f"ledger head {head!r}: hash must be 64 hex digits, count an int >= 0")
    return ChainHead(value, int(count))


def _head_breaks(
    entries: list[LedgerEntry], heads: list[ChainHead], *, sound: bool
) -> list[ChainBreak]:
    """Compare the sound prefix with every head the server recorded."""
    out: list[ChainBreak] = []
    for h in heads:
        if h.count == 0:
            continue
        if h.count <= len(entries):
            mine = entries[h.count - 1].hash
            if mine != h.hash:
                out.append(ChainBreak(h.count - 1, "rewritten", (
                    f"the server recorded hash {h.hash[:16]}… for this entry, the ledger has "
                    f"{mine[:16]}… (rewritten, or cut and appended to again)"
                )))  # fmt: skip
        elif sound:
            out.append(ChainBreak(len(entries), "cut-tail", (
                f"the server recorded {h.count} entries (head {h.hash[:16]}…), the ledger has "
                f"only {len(entries)}"
            )))  # fmt: skip
    return out


def _parse_prefix(
    chain_entries: Sequence[ChainEntry],
) -> tuple[list[LedgerEntry], ChainBreak | None]:
    """Parse bodies up to the first one that is not a valid ledger entry of the same node."""
    parsed: list[LedgerEntry] = []
    for index, chain_entry in enumerate(chain_entries):
        try:
            entry = _to_ledger_entry(chain_entry)
        except LedgerError as err:
            return parsed, ChainBreak(index, "bad-body", str(err))
        if parsed and entry.node != parsed[0].node:
            detail = f"node {entry.node!r} in a ledger of node {parsed[0].node!r}"
            return parsed, ChainBreak(index, "bad-body", detail)
        parsed.append(entry)
    return parsed, None


def _parse_verified(chain_entries: Sequence[ChainEntry], path: Path) -> list[LedgerEntry]:
    """Bodies of an already verified chain; a body that is not a ledger entry is an error."""
    entries, problem = _parse_prefix(chain_entries)
    if problem is not None:
        raise LedgerError(_broken_message(path, problem))
    return entries


def _broken_message(path: Path, problem: ChainBreak | None) -> str:
    where = problem.describe() if problem else "unknown entry"
    return f"{path}: {where}; refusing to use a broken ledger (run fedmodel ledger verify)"


def _to_ledger_entry(chain_entry: ChainEntry) -> LedgerEntry:
    """Parse and type-check a signed body; a body this version cannot read is ``bad-body``."""
    body = chain_entry.body
    kind = body.get("kind")
    if kind not in _BODY_FIELDS:
        raise LedgerError(f"unknown entry kind {kind!r}")
    expected = set(_BODY_FIELDS[kind])
    optional = set(_OPTIONAL_FIELDS.get(kind, ()))
    if not expected <= set(body) <= expected | optional:
        odd = sorted((set(body) ^ expected) - optional)
        raise LedgerError(f"{kind} entry has missing or unexpected fields: {', '.join(odd)}")
    values = dict(body)
    if kind in (*SPENDING_KINDS, "rotation"):
        try:
            values["history"] = tuple(normalise_history(body["history"]))
        except (AccountingError, TypeError, ValueError) as err:
            raise LedgerError(f"history: {err}") from None
    if kind in SPENDING_KINDS:
        releases = body.get("releases", list(DEFAULT_RELEASES))
        if not (isinstance(releases, list) and releases and all(
            isinstance(r, str) and r for r in releases
        )):  # fmt: skip
            raise LedgerError(f"field 'releases' has an invalid value {releases!r}")
        values["releases"] = tuple(releases)
    if kind == "policy" and not isinstance(body["policy"], dict):
        raise LedgerError("field 'policy' must be an object")
    _check_types(values)
    return LedgerEntry(seq=chain_entry.seq, hash=chain_entry.hash, **values)


_NUMBER_FIELDS = {
    "noise_multiplier", "sample_rate", "max_grad_norm", "delta",
    "epsilon", "epsilon_rdp", "projected_epsilon", "cap_epsilon", "cap_delta",
}  # fmt: skip
_INT_FIELDS = {"round", "steps", "dataset_size"}
_STR_FIELDS = {
    "kind", "node", "run_id", "time", "mechanism", "reason", "spend", "update_sha256",
    "policy_sha256", "rotate_to",
}  # fmt: skip
_NULLABLE = {
    "epsilon",
    "epsilon_rdp",
    "projected_epsilon",
    "update_sha256",
    "cap_epsilon",
    "cap_delta",
}
_FREE_FIELDS = {"history", "releases", "policy"}  # checked where they are parsed


def _check_types(values: Mapping[str, Any]) -> None:
    for name, value in values.items():
        if value is None and name in _NULLABLE:
            continue
        ok = (
            (name in _NUMBER_FIELDS and _is_number(value))
            or (name in _INT_FIELDS and _is_int(value))
            or (name in _STR_FIELDS and isinstance(value, str))
            or name in _FREE_FIELDS
        )
        if not ok:
            raise LedgerError(f"field {name!r} has an invalid value {value!r}")


def _validated_round(
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    max_grad_norm: float,
    delta: float,
    dataset_size: int,
    added: Iterable[Sequence[float]] | None,
    *,
    check_steps: bool = True,
) -> list[HistoryEntry]:
    """Reject values that would make a record meaningless *before* anything is signed."""
    checks = {
        "noise_multiplier > 0": _is_number(noise_multiplier) and noise_multiplier > 0,
        "0 < sample_rate <= 1": _is_number(sample_rate) and 0 < sample_rate <= 1,
        "steps an integer >= 0": _is_int(steps) and steps >= 0,
        "max_grad_norm > 0": _is_number(max_grad_norm) and max_grad_norm > 0,
        "0 < delta < 1": _is_number(delta) and 0 < delta < 1,
        "dataset_size an integer >= 0": _is_int(dataset_size) and dataset_size >= 0,
    }
    failed = [rule for rule, ok in checks.items() if not ok]
    if failed:
        raise LedgerError(f"round not recorded: need {failed[0]}")
    if added is None:
        added = [(noise_multiplier, sample_rate, steps)]
    try:
        history = normalise_history(added)
    except (AccountingError, TypeError, ValueError) as err:
        raise LedgerError(f"round not recorded: accountant history: {err}") from None
    if check_steps and sum(h[2] for h in history) != steps:
        raise LedgerError(
            f"round not recorded: accountant history adds {sum(h[2] for h in history)} steps, "
            f"the round reports {steps}"
        )
    return history


def _resolve_node(entries: list[LedgerEntry], node: str | None, path: Path) -> str | None:
    recorded = entries[0].node if entries else None
    if node is not None and (not isinstance(node, str) or not node):
        raise LedgerError("node name must be a non-empty string")
    if node is not None and recorded is not None and node != recorded:
        raise LedgerError(f"{path}: ledger of node {recorded!r}, opened as node {node!r}")
    return node or recorded


def unbounded(entries: Iterable[LedgerEntry]) -> bool:
    """A site that ever released something without noise has no finite epsilon any more."""
    return any(e.spends and e.mechanism == NO_DP for e in entries)


def _history_of(entries: Iterable[LedgerEntry]) -> list[HistoryEntry]:
    return [h for e in entries if e.spends for h in e.history]


def _finite_or_none(value: float) -> float | None:
    """JSON has no infinity; ``null`` in the ledger means "no bound" (never "zero")."""
    return value if math.isfinite(value) else None


def _is_int(value: Any) -> bool:
    """Python or numpy integers (training code hands over both), never bools."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A finite int or float (bools are not numbers here)."""
    return _is_real(value) and math.isfinite(value)
