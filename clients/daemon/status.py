"""``fedmodel node status``: is this node up and connected, what did it last do, what is left.

Everything comes from the node's own disk, so it works with the SuperLink down: the pid file
(is the supervisor alive), the log (did the SuperNode get a node id from the SuperLink, and did
anything fail after that), and the ledger (last round, epsilon spent under the node's own cap,
verified with the node's own public key before any number is believed).
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clients.daemon.checks import load_deployed_node
from clients.daemon.service import PID_FILE
from fedmodel.crypto.keys import public_path
from fedmodel.node_config import NodeConfig
from fedmodel.privacy.budget import cumulative_epsilon
from fedmodel.privacy.ledger import LEDGER_FILE, LedgerEntry, verify_ledger
from server.deploy.processes import read_pid_file

CONNECTED = "SuperNode ID:"
STARTING = "Starting Flower SuperNode"
TROUBLE = ("Exit Code:", "Connection attempt failed", "unavailable", "Giving up")
TAIL = 5


@dataclass
class NodeStatus:
    node: str
    superlink: str
    running: bool
    pid: int | None
    connected: bool
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
    lines = _log_tail(dep.log_file, 400)
    connected, connection = _connection(lines, running is not None)
    entries, problem = _ledger_entries(node)
    spent, delta = _spent(node, entries)
    cap = node.budget.epsilon if node.budget else None
    return NodeStatus(
        node=node.name,
        superlink=dep.superlink,
        running=running is not None,
        pid=int(running["pid"]) if running else None,
        connected=connected,
        connection=connection,
        last_round=_last(entries),
        ledger_entries=len(entries),
        ledger_problem=problem,
        epsilon_spent=spent,
        epsilon_cap=cap,
        epsilon_left=None if cap is None else max(0.0, cap - spent),
        delta=delta,
        log_file=str(dep.log_file),
        log_tail=lines[-TAIL:],
    )


def _connection(lines: list[str], running: bool) -> tuple[bool, str]:
    """From the last SuperNode start in the log: registered with the SuperLink, and no trouble."""
    if not running:
        return False, "not running"
    start = max((i for i, li in enumerate(lines) if STARTING in li), default=-1)
    since = lines[start + 1 :] if start >= 0 else lines
    ids = [i for i, li in enumerate(since) if CONNECTED in li]
    if not ids:
        return False, "starting (no node id from the SuperLink yet)"
    trouble = [li for li in since[ids[-1] :] if any(t in li for t in TROUBLE)]
    if trouble:
        return False, f"connection trouble: {trouble[-1].strip()}"
    node_id = since[ids[-1]].split(CONNECTED, 1)[1].strip()
    return True, f"connected (SuperNode id {node_id})"


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
