"""Find and verify the per-client privacy ledgers a report is built from, and read node caps.

The ledgers are the signed record of what each site spent, so nothing in the report may come
from a ledger that failed verification: every ledger is verified (hash chain, Ed25519
signatures, entry bodies, and the heads the server recorded in metrics.jsonl, which catch a cut
or re-signed tail) before a single number is used. Any failure is a ``ReportError`` naming the
ledger and its first broken entry.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmodel.crypto.keys import registered_verify_keys
from fedmodel.errors import FedmodelError
from fedmodel.nodenames import is_node_name
from fedmodel.privacy.ledger import LEDGER_FILE, LedgerEntry, VerifyReport, verify_ledger
from fedmodel.report.errors import ReportError
from fedmodel.report.model import Budget

NODE_FILE = "node.toml"
DEFAULT_SIGNING_KEY = "keys/signing.ed25519"  # NodeConfig's default, relative to node.toml

Head = dict[str, Any]  # {"hash", "count"}: a node's ledger head as the server recorded it


@dataclass(frozen=True)
class NodeFile:
    """What the report needs from a site's ``node.toml``: its cap and its signing key."""

    path: Path
    cap: Budget | None
    public_key: Path | None


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
) -> VerifiedLedger:
    """Verify one ledger with the node's key, then again against the heads the server saw.

    The node is only known from the ledger itself, so the first pass finds it (and already
    fails on a broken chain); the second adds that node's server-recorded heads and, given the
    coordinator's ``registry``, swaps the site's key for the one the coordinator registered: a
    site that re-signed its ledger with a new key (and replaced ``signer.pub``) fails there.
    """
    node_file = find_node_file(near_ledger(path))
    key = node_file.public_key if node_file else None
    result = _checked(path, key, None)
    if not result.node:
        raise ReportError(f"ledger {path}: empty, no entries to report")
    if registry is not None:
        key = registry.get(result.node)
        if key is None:
            raise ReportError(f"ledger {path}: node {result.node} has no key in the registry")
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
        key_pinned=key is not None,
        heads_checked=result.heads_checked,
        node_file=node_file,
    )


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


def load_cap(run_dir: Path, ledger: VerifiedLedger | None, node: str) -> Budget | None:
    """The node's own cap from ``node.toml`` ``[budget]``; ``None`` when it sets none.

    The file found beside the ledger wins (the site's own disk), then ``RUN_DIR/nodes/<node>``,
    only for a name that follows the node-name rule: ``node`` comes from a reply or a ledger,
    and ``..`` or ``/etc`` would otherwise read a file outside the run folder as a site's cap.
    """
    if ledger is not None and ledger.node_file is not None:
        return ledger.node_file.cap
    if not is_node_name(node):
        return None
    node_file = find_node_file([run_dir / "nodes" / node / NODE_FILE])
    return node_file.cap if node_file else None


def read_node_file(path: Path) -> NodeFile:
    """Parse ``node.toml`` leniently: only ``[budget]`` and ``signing_key`` matter here."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ReportError(f"{path}: unreadable node config: {err}") from None
    signing = path.parent / str(data.get("signing_key", DEFAULT_SIGNING_KEY))
    public = signing.with_name(signing.name + ".pub")
    return NodeFile(
        path=path,
        cap=_parse_cap(path, data.get("budget")),
        public_key=public if public.is_file() else None,
    )


def _parse_cap(path: Path, budget: Any) -> Budget | None:
    if not isinstance(budget, dict) or budget.get("epsilon") is None:
        return None
    try:
        epsilon, delta = float(budget["epsilon"]), float(budget["delta"])
    except (KeyError, TypeError, ValueError):
        raise ReportError(f"{path}: budget: needs numeric epsilon and delta") from None
    if epsilon <= 0 or not 0 < delta < 1:
        raise ReportError(f"{path}: budget: epsilon > 0 and 0 < delta < 1 required")
    return Budget(epsilon=epsilon, delta=delta, source=str(path))
