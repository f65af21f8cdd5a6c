"""What this node last heard from its SuperLink: ``state/link.json``, kept by the supervisor.

``node status`` used to read the link from the log, and stuck: Flower logs every failed
reconnection attempt but nothing while polls succeed, so after a SuperLink restart the last
line about the link stayed a failure although the node was working again (and the node id,
needed to say "connected", rotated out of the tail on a busy node). The supervisor sees every
line the SuperNode prints; ``LinkWatch`` classifies the few that change the link (a node id,
a failed attempt, a successful reconnection, a refused activation) and writes the state when
it changes, so the file is always the latest word, whatever the log holds.

The record also remembers whether this SuperLink has ever accepted this auth key (the last
node id it gave and when). That is the one thing a refusal does not say: Flower's SuperLink
answers an unregistered key and a key whose crashed instance still counts as online with the
same error (``Failed to activate SuperNode``, HTTP 412; the reason stays in the SuperLink's own
log). A key that was never accepted is not worth retrying; one that was may be our crashed self.
A new SuperLink address or a new key starts a new record.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from fedmodel.crypto.keys import public_path
from fedmodel.io import atomic_write_json
from fedmodel.node_config import NodeDeployment

LINK_FILE = "link.json"
STARTING = "Starting Flower SuperNode"
ACTIVATED = "SuperNode ID:"
REFUSED = "Failed to activate SuperNode"
LOST = ("Connection attempt failed", "Giving up reconnection")
RECOVERED = "Connection successful after"

# link states: what the running SuperNode last reported
STATE_STARTING = "starting"
STATE_CONNECTED = "connected"
STATE_UNREACHABLE = "unreachable"
STATE_REFUSED = "refused"
STATE_STOPPED = "stopped"


@dataclass(frozen=True)
class Link:
    superlink: str
    key: str | None  # sha256 of the auth public key file; None without node authentication
    state: str = STATE_STARTING
    since: str = ""
    detail: str = ""
    node_id: str | None = None  # the last id this SuperLink gave this key
    accepted: str | None = None  # when; None: this SuperLink never accepted this key

    def same_identity(self, other: Link) -> bool:
        return (self.superlink, self.key) == (other.superlink, other.key)


def link_identity(dep: NodeDeployment) -> Link:
    """A fresh record for this node's SuperLink and auth key (nothing heard yet)."""
    key = None
    if dep.auth_key is not None:
        pub = public_path(dep.auth_key)
        key = hashlib.sha256(pub.read_bytes()).hexdigest() if pub.is_file() else None
    return Link(superlink=dep.superlink, key=key)


def read_link(dep: NodeDeployment) -> Link:
    """The record for this SuperLink and key; a fresh one if none, unreadable or for another."""
    fresh = link_identity(dep)
    try:
        stored = Link(**_read_json(dep.state_dir / LINK_FILE))
    except (OSError, ValueError, TypeError):
        return fresh
    return stored if stored.same_identity(fresh) else fresh


class LinkWatch:
    """Fed every SuperNode line (from the supervisor's output pump); writes each change."""

    def __init__(self, dep: NodeDeployment) -> None:
        self._path = dep.state_dir / LINK_FILE
        self._lock = threading.Lock()
        self._link = replace(read_link(dep), state=STATE_STARTING, since=_now(), detail="")
        self._active = False  # this SuperNode process got a node id
        self._write()  # the last run's "connected" is no longer true

    @property
    def accepted_before(self) -> Link | None:
        """The record, if this SuperLink ever accepted this key (before or during this run)."""
        with self._lock:
            return self._link if self._link.accepted else None

    def line(self, text: str) -> None:
        with self._lock:
            changed = self._next(text)
            if changed is not None and changed != self._link:
                self._link = changed
                self._write()

    def stopped(self) -> None:
        """The supervisor is done; a refusal stays the last word (status explains it)."""
        with self._lock:
            if self._link.state == STATE_REFUSED:
                return
            self._link = replace(self._link, state=STATE_STOPPED, since=_now(), detail="")
            self._write()

    def _next(self, text: str) -> Link | None:
        link, now = self._link, _now()
        if STARTING in text:
            self._active = False
            return replace(link, state=STATE_STARTING, since=now, detail="")
        if ACTIVATED in text:
            self._active = True
            node_id = text.split(ACTIVATED, 1)[1].strip()
            return replace(link, state=STATE_CONNECTED, since=now, detail="", node_id=node_id,
                           accepted=now)  # fmt: skip
        if REFUSED in text:
            return replace(link, state=STATE_REFUSED, since=now, detail=REFUSED)
        if any(t in text for t in LOST):
            detail = _after_level(text)
            if link.state == STATE_UNREACHABLE:
                return replace(link, detail=detail)  # keep since: when the trouble began
            return replace(link, state=STATE_UNREACHABLE, since=now, detail=detail)
        if RECOVERED in text:  # reachable again; connected only once this process has an id
            state = STATE_CONNECTED if self._active else STATE_STARTING
            return replace(link, state=state, since=now, detail="")
        return None

    def _write(self) -> None:
        # a full disk must not stop the node; status then shows the older state
        with contextlib.suppress(OSError):
            atomic_write_json(self._path, asdict(self._link))


def _read_json(path: Path) -> dict:
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError("not a table")
    return data


def _after_level(line: str) -> str:
    """Flower's message without its level prefix (``WARNING :   ...``)."""
    return line.split(":", 1)[1].strip() if " :" in line else line.strip()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
