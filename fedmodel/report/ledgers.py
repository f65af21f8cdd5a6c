"""Find and verify the per-client privacy ledgers a report is built from.

The ledgers are the signed record of what each site spent, so nothing in the report may come
from a ledger that failed verification: every ledger is verified (hash chain, Ed25519
signatures, entry bodies, and the heads the server recorded in metrics.jsonl, which catch a cut
or re-signed tail) before a single number is used. Any failure is a ``ReportError`` naming the
ledger and its first broken entry.

Where the ledgers come from: the run folder's copies (``RUN_DIR/ledgers/<node>/``, grown by the
server from the signed entries every reply carries, :mod:`fedmodel.privacy.ledger_copy`),
verified with the keys the run registered (``RUN_DIR/registered-keys/``), so a report needs the
run folder alone. ``--ledgers`` adds the sites' own full ledgers as a cross-check: each must
hold its copy's entries, hash for hash, or the report stops. A run folder written before copies
existed falls back to the ledgers below ``RUN_DIR/nodes`` (simulation) or ``--ledgers``.

A site's cap and policy are read from its ledger's signed ``policy`` entries
(:mod:`fedmodel.report.signed`), never from ``node.toml``: anyone with the site's disk can edit
that file after the fact. ``node.toml`` is read for two things only: where the site's public
signing key lies (when no ``--keys`` registry is given), and what it says about the cap and
policy *now*, so that a file that disagrees with the last signed entry can be named in a warning.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fedmodel.crypto.keys import load_verify_key, registered_verify_keys
from fedmodel.errors import FedmodelError
from fedmodel.privacy.ledger import LEDGER_FILE, LedgerEntry, VerifyReport, verify_ledger
from fedmodel.privacy.ledger_copy import COPIES_DIR
from fedmodel.report.errors import ReportError

NODE_FILE = "node.toml"
REGISTERED_DIR = "registered-keys"  # the run's registry, as the ServerApp published it
DEFAULT_SIGNING_KEY = "keys/signing.ed25519"  # NodeConfig's default, relative to node.toml

Head = dict[str, Any]  # {"hash", "count"}: a node's ledger head as the server recorded it


@dataclass(frozen=True)
class NodeFile:
    """What the report reads from a site's ``node.toml``: where its signing key is, and (only
    to compare with the signed entries, never to use) the cap and policy the file states now."""

    path: Path
    public_key: Path | None
    unsigned_cap: tuple[float, float] | None
    unsigned_policy: dict[str, Any]


@dataclass(frozen=True)
class VerifiedLedger:
    """A ledger that passed verification, with its parsed entries in chain order."""

    path: Path
    node: str
    entries: tuple[LedgerEntry, ...]
    head_hash: str | None
    signer: str
    key_source: str
    key_pinned: bool
    heads_checked: int
    node_file: NodeFile | None
    copied: bool = False  # the run folder's copy, from the site's replies


def run_folder_copies(run_dir: Path) -> list[Path]:
    """The server's copies of the sites' ledgers, ``RUN_DIR/ledgers/<node>/ledger.jsonl``."""
    return sorted(p.resolve() for p in (run_dir / COPIES_DIR).glob(f"*/{LEDGER_FILE}"))


def run_folder_registry(run_dir: Path) -> dict[str, Path] | None:
    """``RUN_DIR/registered-keys``: the node keys the run accepted replies under, if recorded."""
    folder = run_dir / REGISTERED_DIR
    return load_registry(folder) if folder.is_dir() else None


def check_against_own(
    copies: Mapping[str, VerifiedLedger], full: Mapping[str, VerifiedLedger]
) -> dict[str, VerifiedLedger]:
    """``--ledgers`` against the run folder: each site's own ledger must start with exactly the
    entries its replies carried; then the copy stays the source, with the site's ``node.toml``
    (to name a file that disagrees with the signed policy). A site without a copy (a run folder
    from before copies) is reported from its own ledger."""
    out = dict(copies)
    for node, own in full.items():
        copy = copies.get(node)
        if copy is None:
            out[node] = own
            continue
        mismatch = _first_difference(copy.entries, own.entries)
        if mismatch is not None:
            raise ReportError(
                f"--ledgers {own.path}: {node}'s ledger differs from the run folder's copy "
                f"{copy.path} {mismatch}: the site's history was rewritten after it replied"
            )
        out[node] = replace(
            copy,
            node_file=own.node_file,
            key_source=f"{copy.key_source}; matches the site's ledger {own.path}",
        )
    return out


def _first_difference(copy: Sequence[LedgerEntry], own: Sequence[LedgerEntry]) -> str | None:
    for index, entry in enumerate(copy):
        if index >= len(own):
            return f"after entry {index - 1}: it ends there, the copy holds {len(copy)} entries"
        if own[index].hash != entry.hash:
            return f"at entry {index} ({own[index].hash[:16]}… vs {entry.hash[:16]}…)"
    return None


def find_ledgers(run_dir: Path, given: Sequence[Path] | None = None) -> list[Path]:
    """Ledger files to report on: below each ``--ledgers`` path, else below ``RUN_DIR/nodes``.

    Lenient on layout (``nodes/node-0/ledger/ledger.jsonl`` or ``nodes/node-0/ledger.jsonl``)
    because simulation and deployment sites lay their folders out differently; strict on an
    explicitly named path that holds no ledger, since that is a typo the user wants to hear about.
    """
    if not given:
        nodes = run_dir / "nodes"
        return sorted(p.resolve() for p in nodes.rglob(LEDGER_FILE)) if nodes.is_dir() else []
    found: list[Path] = []
    for path in given:
        below = (
            [path] if path.is_file() else sorted(path.rglob(LEDGER_FILE)) if path.is_dir() else []
        )
        if not below:
            raise ReportError(f"--ledgers {path}: no {LEDGER_FILE} found there")
        found.extend(below)
    return sorted(dict.fromkeys(p.resolve() for p in found))


def verify(
    path: Path,
    heads_by_node: Mapping[str, Sequence[Head]],
    registry: Mapping[str, Path] | None = None,
    *,
    copied: bool = False,
) -> VerifiedLedger:
    """Verify one ledger with the node's key, then again against the heads the server saw.

    The node is only known from the ledger itself, so the first pass finds it (and already
    fails on a broken chain); the second adds that node's server-recorded heads and, given the
    coordinator's ``registry``, swaps the site's key for the one the coordinator registered: a
    site that re-signed its ledger with a new key (and replaced ``signer.pub``) fails there.
    """
    node_file = find_node_file(near_ledger(path))
    key = _first_key(path, node_file.public_key if node_file else None)
    result = _checked(path, key, None)
    if not result.node:
        raise ReportError(f"ledger {path}: empty, no entries to report")
    if registry is not None:
        registered = registry.get(result.node)
        if registered is None:
            raise ReportError(f"ledger {path}: node {result.node} has no key in the registry")
        key = _first_key(path, registered)  # a rotated ledger verifies from its first key
    heads = list(heads_by_node.get(result.node, ()))
    if heads or registry is not None:
        result = _checked(path, key, heads)
    return VerifiedLedger(
        path=path,
        node=result.node,
        entries=result.entries,
        head_hash=result.head.hash if result.entries else None,
        signer=result.signer,
        key_source=result.key_source,
        key_pinned=key is not None or registry is not None,
        copied=copied,
        heads_checked=result.heads_checked,
        node_file=node_file,
    )


def _first_key(path: Path, node_key: Path | None) -> Path | None:
    """The key to verify the chain from: the node's key named in ``node.toml``, unless the
    site rotated its key (``fedmodel keys rotate``). Then node.toml names the *current* key and
    the chain starts with the ledger's ``signer.pub``; that one is used, and only if the chain's
    last rotation hands over to the node's key (else the node's key is used, and fails)."""
    if node_key is None:
        return None
    try:
        if verify_ledger(path, public_key=node_key).ok:
            return node_key
        from_first = verify_ledger(path)
        current = load_verify_key(node_key).public_bytes_raw().hex()
    except FedmodelError:
        return node_key
    rotations = [e for e in from_first.entries if e.kind == "rotation"]
    if from_first.ok and rotations and rotations[-1].rotate_to == current:
        return None
    return node_key


def load_registry(directory: Path) -> dict[str, Path]:
    """``--keys DIR``: the coordinator's ``<node>.ed25519.pub`` files, by node name."""
    try:
        return registered_verify_keys(directory)
    except FedmodelError as err:
        raise ReportError(f"--keys {err}") from None


def _checked(path: Path, key: Path | None, heads: list[Head] | None) -> VerifyReport:
    try:
        result = verify_ledger(path, public_key=key, heads=heads)
    except FedmodelError as err:
        raise ReportError(f"ledger {path}: cannot verify: {err}") from None
    if not result.ok:
        assert result.first_break is not None
        raise ReportError(f"ledger {path}: broken at {result.first_break.describe()}")
    return result


def find_node_file(candidates: Sequence[Path]) -> NodeFile | None:
    """The first ``node.toml`` among ``candidates``; ``None`` when the site's file is not here."""
    for candidate in candidates:
        if candidate.is_file():
            return read_node_file(candidate)
    return None


def near_ledger(ledger_path: Path) -> list[Path]:
    """Where a site keeps ``node.toml`` relative to its ledger: beside it, or one folder up
    (simulation: ``nodes/node-k/node.toml`` with ``nodes/node-k/ledger/ledger.jsonl``)."""
    return [ledger_path.parent / NODE_FILE, ledger_path.parent.parent / NODE_FILE]


def read_node_file(path: Path) -> NodeFile:
    """Parse ``node.toml`` leniently: ``signing_key`` locates the key; ``[budget]`` and
    ``[policy]`` are kept as the file states them, for comparison with the signed entries only
    (a malformed budget there is "no cap stated", not an error: it decides nothing here)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ReportError(f"{path}: unreadable node config: {err}") from None
    signing = path.parent / str(data.get("signing_key", DEFAULT_SIGNING_KEY))
    public = signing.with_name(signing.name + ".pub")
    policy = data.get("policy")
    return NodeFile(
        path=path,
        public_key=public if public.is_file() else None,
        unsigned_cap=_stated_cap(data.get("budget")),
        unsigned_policy=dict(policy) if isinstance(policy, dict) else {},
    )


def _stated_cap(budget: Any) -> tuple[float, float] | None:
    if not isinstance(budget, dict):
        return None
    try:
        return float(budget["epsilon"]), float(budget["delta"])
    except (KeyError, TypeError, ValueError):
        return None
