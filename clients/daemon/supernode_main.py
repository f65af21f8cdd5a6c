"""Flower's own ``flower-supernode``, with shorter polls.

An idle SuperNode asks the SuperLink for work and, when there is none, sleeps a hard-coded 3 s;
while a ClientApp runs it checks for the reply every 0.5 s. Every round starts with the nodes
idle, so a round waits on average half the idle poll before any node starts, and up to 0.5 s
before a finished reply leaves. This entry point runs the unmodified ``flower-supernode`` main
in this process, with the ``time`` module seen by ``flwr.supernode.start_client_internal``
replaced by one whose ``sleep`` is capped: the idle sleep at ``POLL`` seconds, the in-round
waits at 0.1 s. Flower's installed files are not touched.

The cost is one small HTTPS request to the SuperLink every ``POLL`` seconds per idle node, and
a few local checks per second while a task runs.
"""

from __future__ import annotations

import sys
import time
from types import ModuleType
from typing import Any

IDLE_SLEEP = 3.0  # start_client_internal: no message for this node
BUSY_CAP = 0.1  # its waits for a reply / an object while a task runs (0.5 s each)


class CappedSleep:
    """Stands in for the ``time`` module: everything delegates, except a capped ``sleep``."""

    def __init__(self, idle_cap: float, real: ModuleType = time) -> None:
        self.idle_cap = idle_cap
        self._real = real

    def sleep(self, seconds: float) -> None:
        cap = self.idle_cap if seconds >= IDLE_SLEEP else BUSY_CAP
        self._real.sleep(min(seconds, cap))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def run(poll: float, flower_args: list[str]) -> None:
    import flwr.supernode.start_client_internal as internal
    from flwr.supernode.cli import flower_supernode

    internal.time = CappedSleep(poll)  # type: ignore[assignment]
    sys.argv = ["flower-supernode", *flower_args]
    flower_supernode()


def main() -> None:
    """``python -m clients.daemon.supernode_main POLL [flower-supernode args...]``"""
    poll = float(sys.argv[1])
    run(poll, sys.argv[2:])


if __name__ == "__main__":
    main()
