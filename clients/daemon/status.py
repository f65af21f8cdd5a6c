"""``fedmodel node status``: is this node up and connected, what did it last do, what is left.

Everything comes from the node's own disk, so it works with the SuperLink down: the pid file
(is the supervisor alive, and is it really ours), ``link.json`` (what the running SuperNode last
heard from the SuperLink, and whether that SuperLink ever accepted this key; kept by the
supervisor, ``clients/daemon/link.py``), the log's last lines, and the ledger (last round,
epsilon spent under the node's own cap, verified with the node's own public key before any
number is believed).

``link`` is one of: ``connected``; ``server-unreachable`` (running, its last attempt to reach
the SuperLink failed; Flower keeps retrying); ``starting``; ``refused-retrying`` (refused,
though accepted before: a crashed instance may still hold its place); ``registered-offline``
(not running, and this SuperLink has accepted its key); ``never-registered`` (the SuperLink
refused the key and never accepted it); ``not-running`` (never connected, nothing known).
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clients.daemon import link as lk
from clients.daemon.checks import load_deployed_node
from clients.daemon.service import PID_FILE, REGISTER
from fedmodel.crypto.keys import public_path
from fedmodel.node_config import NodeConfig
from fedmodel.privacy.budget import cumulative_epsilon
from fedmodel.privacy.ledger import LEDGER_FILE, LedgerEntry, verify_ledger
from server.deploy.pidfile import read_pid_file

TAIL = 5


@dataclass
class NodeStatus:
    node: str
    superlink: str
    running: bool
    pid: int | None
    connected: bool
    link: str
    connection: str
    last_round: dict[str, Any] | None
    ledger_entries: int
    ledger_problem: str | None
    epsilon_spent: float
    epsilon_cap: float | None
    epsilon_left: float | None
    delta: float | None
    log_file: str
    log_tail: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def node_status(config: str | Path) -> NodeStatus:
    node, dep, _ = load_deployed_node(config)
    running = read_pid_file(dep.state_dir / PID_FILE)
    lines = _log_tail(dep.log_file, TAIL)
    link, connection = _connection(lk.read_link(dep), running is not None, node.name)
    entries, problem = _ledger_entries(node)
    spent, delta = _spent(node, entries)
    cap = node.budget.epsilon if node.budget else None
    return NodeStatus(
        node=node.name,
        superlink=dep.superlink,
        running=running is not None,
        pid=int(running["pid"]) if running else None,
        connected=link == "connected",
        link=link,
        connection=connection,
        last_round=_last(entries),
        ledger_entries=len(entries),
        ledger_problem=problem,
        epsilon_spent=spent,
        epsilon_cap=cap,
        epsilon_left=None if cap is None else max(0.0, cap - spent),
        delta=delta,
        log_file=str(dep.log_file),
        log_tail=lines,
    )


def _connection(link: lk.Link, running: bool, name: str) -> tuple[str, str]:
    """``(link, one line)`` from the supervisor's record and whether it is alive now."""
    known = f"SuperNode id {link.node_id}, accepted {link.accepted}" if link.accepted else ""
    if link.state == lk.STATE_REFUSED and not link.accepted:
        return "never-registered", (
            f"never registered: the SuperLink refused this node's key ({link.since}); the "
            f"coordinator runs: {REGISTER.format(name=name)}"
        )
    if not running:
        if link.accepted:
            return "registered-offline", f"registered, offline: node not running ({known})"
        return "not-running", "not running (never connected to this SuperLink)"
    if link.state == lk.STATE_CONNECTED:
        return "connected", f"connected (SuperNode id {link.node_id}, since {link.since})"
    if link.state == lk.STATE_UNREACHABLE:
        last = f"; last connected as {known}" if known else ""
        return "server-unreachable", (
            f"server unreachable since {link.since} ({link.detail}); retrying{last}"
        )
    if link.state == lk.STATE_REFUSED:
        return "refused-retrying", (
            f"refused by the SuperLink since {link.since}, retrying: a crashed instance may "
            f"still count as online there ({known})"
        )
    return "starting", "starting (no node id from the SuperLink yet)"


def _ledger_entries(node: NodeConfig) -> tuple[list[LedgerEntry], str | None]:
    """The sound entries, verified with the node's own public key, and what broke, if anything.

    A broken ledger is reported, not raised: status must still say whether the node is up.
    """
    if not (node.ledger_dir / LEDGER_FILE).is_file():
        return [], None
    report = verify_ledger(node.ledger_dir, public_key=public_path(node.signing_key))
    return list(report.entries), None if report.ok else report.summary()


def _spent(node: NodeConfig, entries: list[LedgerEntry]) -> tuple[float, float | None]:
    """Cumulative epsilon at the cap's delta (or the last round's), over every run."""
    rounds = [e for e in entries if e.spends]
    delta = node.budget.delta if node.budget else (rounds[-1].delta if rounds else None)
    if not rounds or delta is None:
        return 0.0, delta
    return cumulative_epsilon([h for e in rounds for h in e.history], delta), delta


def _last(entries: list[LedgerEntry]) -> dict[str, Any] | None:
    if not entries:
        return None
    e = entries[-1]
    return {"run_id": e.run_id, "round": e.round, "kind": e.kind, "time": e.time,
            "reason": e.reason}  # fmt: skip


def _log_tail(path: Path, n: int) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return [li.rstrip("\n") for li in deque(fh, maxlen=n)]
    except OSError:
        return []
