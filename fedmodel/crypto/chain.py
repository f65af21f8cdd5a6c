"""A generic signed, hash-chained JSON-lines log (privacy ledgers, the server's audit log).

Each line of the file is one entry::

    {"seq": n, "prev": <hash of entry n-1, or 64 zeros>, "body": {...},
     "signer": <fingerprint of the signing key>, "hash": <sha256 hex>, "sig": <base64>}

``hash`` is sha256 over the canonical JSON (sorted keys, no spaces) of ``seq``, ``prev``, ``body``
and ``signer``; ``sig`` is the Ed25519 signature over the 32 raw digest bytes. Changing any body
value changes the hash; recomputing the hash needs the key to re-sign; removing or reordering
entries, or splicing in an entry another chain of the same key holds at the same ``seq``, breaks
a ``prev`` link. What the chain cannot show is a *cut tail* or a wholesale rewrite
by the key holder: that is what the heads recorded elsewhere (by the server) are for.

Crash safety: every append rewrites the whole file atomically (temp file + fsync + rename +
directory fsync, :func:`fedmodel.io.atomic_write_bytes`). A crash therefore leaves the previous
file or the new one, never half an entry, and the entries already written are never reopened
for writing. The alternative, appending a line with fsync, can leave a torn final line after a
power cut (POSIX promises no atomic append), and the next append would then have to repair the
file before writing, which is exactly the moment a bug can destroy evidence. The cost is O(size)
per append; a ledger holds one line (~0.6 KB) per round, so 10,000 rounds rewrite 6 MB, which is
fine; a log expected to grow far beyond that should be segmented. Verification still detects a
torn final line (a file damaged outside fedmodel, or copied mid-write by another tool) and
names it, and the entries before it still verify.

Concurrent appenders (two processes on one node) serialise on ``fcntl.flock`` of ``<file>.lock``
and re-read and re-verify the chain inside the lock, so neither can fork the chain. Readers need
no lock: rename is atomic, so they see a whole file.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from fedmodel.crypto.keys import KeyFileError, fingerprint, load_verify_key
from fedmodel.errors import FedmodelError
from fedmodel.io import atomic_write_bytes

ZERO_HASH = "0" * 64
ROTATE_TO = "rotate_to"  # a body field: raw Ed25519 public key (hex) that signs every later entry
FILE_MODE = 0o644
LOCK_MODE = 0o600  # flock works on a read-only descriptor: others must not open it at all
LOCK_TIMEOUT_S = 60.0
ENTRY_FIELDS = ("seq", "prev", "body", "signer", "hash", "sig")

BreakKind = Literal["torn-line", "malformed", "bad-hash", "bad-signature", "broken-link", "seq-gap"]


class ChainError(FedmodelError):
    """The chain file cannot be read, is broken where an append needs it sound, or is locked."""


@dataclass(frozen=True)
class ChainHead:
    """What a node reports and a server records: the last entry's hash and the entry count."""

    hash: str
    count: int

    def as_dict(self) -> dict[str, Any]:
        return {"hash": self.hash, "count": self.count}


EMPTY_HEAD = ChainHead(ZERO_HASH, 0)


@dataclass(frozen=True)
class ChainEntry:
    seq: int
    prev: str
    body: dict[str, Any]
    signer: str
    hash: str
    sig: str

    def to_line(self) -> str:
        """The JSON line as stored: fields in reading order, body keys sorted (canonical)."""
        return json.dumps(
            {name: getattr(self, name) for name in ENTRY_FIELDS},
            separators=(",", ":"),
            allow_nan=False,
        )


@dataclass(frozen=True)
class ChainBreak:
    """The first entry that fails verification. ``index`` is its 0-based position (= its seq).

    ``kind`` is one of :data:`BreakKind` here; layers above add their own (the ledger adds
    ``bad-body``, ``cut-tail`` and ``rewritten``), hence a plain ``str``.
    """

    index: int
    kind: str
    detail: str

    def describe(self) -> str:
        return f"entry {self.index}: {self.kind}: {self.detail}"


class VerifiedPrefix:
    """What every verification result means by ``ok`` and ``head``, whatever its entries are.

    Mixed into :class:`ChainVerification` and the ledger's ``VerifyReport`` (which holds the
    same prefix parsed as ledger entries), so a chain and a ledger can never disagree about
    whether a file is sound or where its head is. Subclasses are dataclasses with these fields.
    """

    entries: Sequence[Any]
    first_break: ChainBreak | None

    @property
    def ok(self) -> bool:
        return self.first_break is None

    @property
    def head(self) -> ChainHead:
        """Head of the verified prefix (the whole chain when ``ok``)."""
        return head_of(self.entries)


@dataclass(frozen=True)
class ChainVerification(VerifiedPrefix):
    """Result of :func:`verify_chain`: the sound prefix, the number of lines, the first break,
    and the fingerprint of the key that signs the chain's next entry (its last rotation's)."""

    path: Path
    entries: tuple[ChainEntry, ...]
    total: int
    first_break: ChainBreak | None
    active_signer: str = ""


# --- hashing and signing -------------------------------------------------------------------------


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace, no NaN/Infinity: the byte form every hash is computed over.

    Python writes floats with ``repr``, the shortest string that reads back to the same double,
    so a hash recomputed from the parsed file equals the one computed before writing.
    """
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ChainError(f"chain body is not canonical JSON: {err}") from None


def entry_hash(seq: int, prev: str, body: Mapping[str, Any], signer: str) -> str:
    payload = {"seq": seq, "prev": prev, "body": body, "signer": signer}
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


def make_entry(
    seq: int, prev: str, body: Mapping[str, Any], signing_key: ed25519.Ed25519PrivateKey
) -> ChainEntry:
    """Hash and sign one entry. The body is normalised through JSON first, so the returned
    entry holds exactly what a reader of the file will parse (lists not tuples, str keys)."""
    normal = json.loads(canonical_json(body))
    signer = fingerprint(signing_key)
    digest = entry_hash(seq, prev, normal, signer)
    sig = base64.b64encode(signing_key.sign(bytes.fromhex(digest))).decode("ascii")
    return ChainEntry(seq=seq, prev=prev, body=normal, signer=signer, hash=digest, sig=sig)


# --- reading and verifying -----------------------------------------------------------------------


def verify_chain(
    path: str | os.PathLike[str], public_key: ed25519.Ed25519PublicKey
) -> ChainVerification:
    """Check every entry in order and stop at the first broken one, naming it and the kind."""
    p = Path(path)
    if not p.is_file():
        raise ChainError(f"{p}: no such chain file")
    return _verify_bytes(p, _read_bytes(p), public_key)


def head(path: str | os.PathLike[str]) -> ChainHead:
    """Hash and count of the last complete entry, read without verifying anything.

    Cheap enough for every reply; the ledger reports the head of a *verified* chain instead.
    A missing file is an empty chain.
    """
    p = Path(path)
    lines, _torn = _split_lines(_read_bytes(p))
    if not lines:
        return EMPTY_HEAD
    entry = _parse_entry(lines[-1])
    if isinstance(entry, str):
        raise ChainError(f"{p}: entry {len(lines) - 1}: malformed: {entry}")
    return ChainHead(entry.hash, len(lines))


def _read_bytes(p: Path) -> bytes:
    try:
        return p.read_bytes()
    except FileNotFoundError:
        return b""
    except OSError as err:
        raise ChainError(f"{p}: cannot read chain file: {err.strerror}") from None


def _split_lines(data: bytes) -> tuple[list[bytes], bytes | None]:
    """Complete (newline-terminated) lines, and the unterminated tail if any."""
    parts = data.split(b"\n")
    tail = parts.pop()
    return parts, (tail if tail else None)


def _verify_bytes(p: Path, data: bytes, public_key: ed25519.Ed25519PublicKey) -> ChainVerification:
    """Verify from the chain's first key; an entry naming ``rotate_to`` hands signing to that
    key for every later entry (the rotation is signed by the key it retires)."""
    lines, torn = _split_lines(data)
    expected_signer = fingerprint(public_key)
    entries: list[ChainEntry] = []
    total = len(lines) + bool(torn)
    for index, raw in enumerate(lines):
        entry = _parse_entry(raw)
        problem = (
            ChainBreak(index, "malformed", entry)
            if isinstance(entry, str)
            else _check_entry(index, entry, head_of(entries).hash, public_key, expected_signer)
        )
        if problem is None:
            rotated = _rotation(entry)  # type: ignore[arg-type]
            if isinstance(rotated, str):
                problem = ChainBreak(index, "malformed", rotated)
            elif rotated is not None:
                public_key, expected_signer = rotated, fingerprint(rotated)
        if problem is not None:
            return ChainVerification(p, tuple(entries), total, problem, expected_signer)
        entries.append(entry)  # type: ignore[arg-type]
    first_break = None
    if torn is not None:
        first_break = ChainBreak(
            len(lines), "torn-line", f"{len(torn)} bytes without a newline at the end of the file"
        )
    return ChainVerification(p, tuple(entries), total, first_break, expected_signer)


def _rotation(entry: ChainEntry) -> ed25519.Ed25519PublicKey | str | None:
    """The key a verified entry hands signing to, ``None`` if it rotates nothing, or why its
    ``rotate_to`` is not a key."""
    value = entry.body.get(ROTATE_TO)
    if value is None:
        return None
    try:
        return ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(str(value)))
    except ValueError:
        return f"{ROTATE_TO} is not a raw Ed25519 public key in hex"


def rotation_body_field(new_key: ed25519.Ed25519PublicKey) -> dict[str, str]:
    """The body field that rotates a chain to ``new_key`` (append it signed by the old key)."""
    return {ROTATE_TO: new_key.public_bytes_raw().hex()}


def _parse_entry(raw: bytes) -> ChainEntry | str:
    """A :class:`ChainEntry`, or a short reason why the line is not one."""
    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError):
        return "line is not valid JSON (or holds NaN/Infinity)"
    if not isinstance(obj, dict) or set(obj) != set(ENTRY_FIELDS):
        return f"expected exactly the fields {', '.join(ENTRY_FIELDS)}"
    kinds = {"seq": int, "prev": str, "body": dict, "signer": str, "hash": str, "sig": str}
    for name, kind in kinds.items():
        if not isinstance(obj[name], kind) or isinstance(obj[name], bool):
            return f"field {name!r} must be {kind.__name__}"
    return ChainEntry(**obj)


def _reject_constant(name: str) -> Any:
    """NaN and Infinity are not JSON and never written; a line holding one was edited."""
    raise ValueError(f"{name} is not canonical JSON")


def _check_entry(
    index: int,
    entry: ChainEntry,
    prev_hash: str,
    public_key: ed25519.Ed25519PublicKey,
    expected_signer: str,
) -> ChainBreak | None:
    """Content first, then origin, then position: a changed number reads as ``bad-hash``, a
    removed, swapped or spliced entry (intact itself) as ``broken-link``."""
    if entry.hash != entry_hash(entry.seq, entry.prev, entry.body, entry.signer):
        return ChainBreak(
            index, "bad-hash", f"content changed after signing (stored hash {entry.hash[:16]}…)"
        )
    if not _signature_ok(entry, public_key):
        return ChainBreak(
            index,
            "bad-signature",
            f"signature does not verify with key {expected_signer[:16]}… "
            f"(entry names signer {entry.signer[:16]}…)",
        )
    if entry.signer != expected_signer:
        return ChainBreak(
            index, "bad-signature", f"entry names signer {entry.signer[:16]}…, not the given key"
        )
    if entry.prev != prev_hash:
        return ChainBreak(index, "broken-link", _link_detail(index, entry, prev_hash))
    if entry.seq != index:
        return ChainBreak(index, "seq-gap", f"seq {entry.seq} where {index} was expected")
    return None


def _link_detail(index: int, entry: ChainEntry, prev_hash: str) -> str:
    """Why a signed entry does not link to its predecessor, in the reader's terms.

    An intact entry whose seq fits its position yet links elsewhere was made for this position
    of *another* chain signed by the same key (a site's second ledger, an older install's log):
    a splice, which only the link exposes. A seq that does not fit means entries were
    removed, inserted or reordered within the chain.
    """
    if not index:
        return f"first entry must have prev {ZERO_HASH[:16]}…, has {entry.prev[:16]}…"
    link = f"prev {entry.prev[:16]}… is not the hash of entry {index - 1} ({prev_hash[:16]}…)"
    if entry.seq == index:
        return (
            f"{link}: entry {index - 1} or {index} was spliced in from another chain signed "
            "by the same key (its seq fits, its link does not)"
        )
    return f"{link}: an entry was removed, inserted or reordered"


def verify_entry(line: str | bytes, public_key: ed25519.Ed25519PublicKey) -> ChainEntry:
    """One entry taken out of its chain (e.g. a ledger's refusal sent to the server): its content
    hash and its signature by ``public_key``. Its place in the chain is not checked here; the
    chain's head, which the server records, is what binds it there."""
    raw = line.encode("utf-8") if isinstance(line, str) else line
    entry = _parse_entry(raw)
    if isinstance(entry, str):
        raise ChainError(f"not a chain entry: {entry}")
    expected = fingerprint(public_key)
    problem = _check_entry(entry.seq, entry, entry.prev, public_key, expected)
    if problem is not None:
        raise ChainError(f"{problem.kind}: {problem.detail}")
    return entry


def _signature_ok(entry: ChainEntry, public_key: ed25519.Ed25519PublicKey) -> bool:
    try:
        sig = base64.b64decode(entry.sig, validate=True)
        public_key.verify(sig, bytes.fromhex(entry.hash))
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def head_of(entries: Sequence[Any]) -> ChainHead:
    """Head after ``entries`` (anything with a ``hash``: chain or ledger entries)."""
    return ChainHead(entries[-1].hash, len(entries)) if entries else EMPTY_HEAD


# --- appending -----------------------------------------------------------------------------------


class SignedChain:
    """One chain file owned by one signing key; appends are locked, verified and atomic."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        signing_key: ed25519.Ed25519PrivateKey,
        *,
        first_key: ed25519.Ed25519PublicKey | None = None,
        lock_timeout_s: float = LOCK_TIMEOUT_S,
    ) -> None:
        """``first_key`` is the key that signed the chain's first entry, when keys have been
        rotated since (verification follows the rotations from it); ``signing_key`` must be the
        chain's current key to append."""
        if not isinstance(signing_key, ed25519.Ed25519PrivateKey):
            raise ChainError("a chain is signed with an Ed25519 private key")
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.public_key = signing_key.public_key()
        self.first_key = first_key or self.public_key
        self._signing_key = signing_key
        self._lock_timeout_s = lock_timeout_s

    def verify(self) -> ChainVerification:
        """Verify from the first key, through every rotation; a missing file is an empty,
        sound chain."""
        return _verify_bytes(self.path, _read_bytes(self.path), self.first_key)

    def append(self, body: Mapping[str, Any]) -> ChainEntry:
        entry = self.append_with(lambda _entries: body)
        assert entry is not None  # the factory always returns a body
        return entry

    def append_with(
        self,
        make_body: Callable[[tuple[ChainEntry, ...]], Mapping[str, Any] | None],
        *,
        lock: bool = True,
    ) -> ChainEntry | None:
        """Append the body ``make_body(verified_entries)`` returns; ``None`` appends nothing.

        The factory runs inside the lock on a freshly verified chain, so a body that depends on
        the history (a cumulative epsilon) can never be computed from a stale copy. ``lock=False``
        is for a caller that already holds :meth:`locked` around a larger transaction.
        """

        def one(entries: tuple[ChainEntry, ...]) -> list[Mapping[str, Any]]:
            body = make_body(entries)
            return [] if body is None else [body]

        written = self.append_all_with(one, lock=lock)
        return written[0] if written else None

    def append_all_with(
        self,
        make_bodies: Callable[[tuple[ChainEntry, ...]], Sequence[Mapping[str, Any]]],
        *,
        lock: bool = True,
    ) -> tuple[ChainEntry, ...]:
        """Append every body ``make_bodies(verified_entries)`` returns, in order, in one write.

        A transaction of several entries (a signed policy change and the spend decided under it)
        costs one read, one verification and one durable write instead of one of each per entry,
        and a crash leaves all of them or none.
        """
        with self.locked() if lock else contextlib.nullcontext():
            data = _read_bytes(self.path)
            verification = _verify_bytes(self.path, data, self.first_key)
            if not verification.ok:
                raise ChainError(
                    f"{self.path}: {verification.first_break.describe()}; "  # type: ignore[union-attr]
                    "refusing to append to a broken chain"
                )
            if verification.active_signer != fingerprint(self.public_key):
                raise ChainError(
                    f"{self.path}: its current key is {verification.active_signer[:16]}…, "
                    f"this writer's is {fingerprint(self.public_key)[:16]}…"
                )
            bodies = make_bodies(verification.entries)
            if not bodies:
                return ()
            tip, written = verification.head, []
            for index, body in enumerate(bodies):
                if ROTATE_TO in body and index != len(bodies) - 1:
                    raise ChainError("a rotation must be the last entry of one write")
                entry = make_entry(tip.count, tip.hash, body, self._signing_key)
                written.append(entry)
                tip = ChainHead(entry.hash, entry.seq + 1)
            self._remove_stale_temp_files()
            lines = b"".join(e.to_line().encode("utf-8") + b"\n" for e in written)
            atomic_write_bytes(self.path, data + lines, mode=FILE_MODE)
            return tuple(written)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive ``flock`` on ``<file>.lock``; gives up with a ChainError after the timeout."""
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, LOCK_MODE)
        try:
            self._acquire(fd)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _acquire(self, fd: int) -> None:
        deadline = time.monotonic() + self._lock_timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    raise ChainError(f"{self.lock_path}: cannot lock: {err.strerror}") from None
            if time.monotonic() >= deadline:
                raise ChainError(
                    f"{self.lock_path}: still locked by another writer after "
                    f"{self._lock_timeout_s:g} s"
                )
            time.sleep(0.01)

    def _remove_stale_temp_files(self) -> None:
        """Temp files a killed writer left behind; safe to remove because we hold the lock."""
        for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            stale.unlink(missing_ok=True)


def resolve_verify_key(
    public_key: ed25519.Ed25519PublicKey | str | os.PathLike[str] | None,
    default_file: Path,
    default_source: str,
    error: type[FedmodelError],
    missing_hint: str,
) -> tuple[ed25519.Ed25519PublicKey, str]:
    """The key a chain is verified with, and where it came from (for the verdict's wording).

    A given key wins; else a key file; else the chain's default key file beside it, which only
    proves self-consistency, so callers say so. Every failure is ``error`` naming the file.
    """
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return public_key, "given key"
    key_file = Path(public_key) if public_key is not None else default_file
    if public_key is None and not key_file.is_file():
        raise error(f"{key_file}: missing; {missing_hint}")
    try:
        key = load_verify_key(key_file)
    except KeyFileError as err:
        raise error(str(err)) from None
    return key, default_source if public_key is None else str(key_file)
