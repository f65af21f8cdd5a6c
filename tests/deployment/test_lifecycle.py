"""A node's life cycle on a real loopback deployment (TLS, node authentication).

One federation, started once with ``fedmodel server start`` / ``fedmodel node start``:

1. node-0 connects; ``node status`` says connected.
2. The coordinator stops the SuperLink by its pid file (``fedmodel server stop``) and starts it
   again; node-0's SuperNode retries and reconnects on its own. ``node status`` must say
   connected again (it used to stay at "connection trouble" for ever).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from clients.daemon.status import node_status
from fedmodel.cli.server_cmd import app as server_app
from server.deploy.loopback import Federation, kill_group, loopback, start, wait_for_count

START_TIMEOUT = 120.0
RECONNECT_TIMEOUT = 90.0  # Flower's backoff between reconnection attempts grows to ~20 s
CONNECTED = "SuperNode ID:"
RECONNECTED = "Connection successful after"
READY = "SuperLink ready"


class Federation1:
    """The processes of one loopback federation; ``close`` kills every group it started."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fed: Federation = loopback(
            root, ["node-0"], ["node-0"], deployment={"*": {"warm_launcher": False}}
        )
        self.procs: dict[str, object] = {}

    def out(self, name: str) -> Path:
        return self.root / f"{name}.out"

    def node_log(self, name: str) -> Path:
        return self.root / name / "logs" / "node.log"

    def start(self, name: str, *args: str):
        proc = start(list(args), self.out(name))
        self.procs[f"{name}-{len(self.procs)}"] = proc
        return proc

    def start_server(self, starts: int = 1):
        proc = self.start("server", "server", "start", "--config", str(self.fed.server_toml))
        wait_for_count(self.out("server"), READY, starts, START_TIMEOUT, proc)
        return proc

    def close(self) -> None:
        for proc in reversed(list(self.procs.values())):
            kill_group(proc)  # type: ignore[arg-type]


def cli(app, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    dep = Federation1(tmp_path_factory.mktemp("lifecycle"))
    seen: dict = {"dep": dep}
    try:
        server = dep.start_server()
        node = dep.start("node-0", "node", "start", "--config", str(dep.fed.node_toml("node-0")))
        wait_for_count(dep.node_log("node-0"), CONNECTED, 1, START_TIMEOUT, node)
        seen["before"] = node_status(dep.fed.node_toml("node-0"))

        seen["server_stop"] = cli(server_app, "stop", "--config", str(dep.fed.server_toml))
        seen["server_exit"] = server.wait(timeout=60)
        dep.start_server(starts=2)
        wait_for_count(dep.node_log("node-0"), RECONNECTED, 1, RECONNECT_TIMEOUT, node)
        seen["after_restart"] = node_status(dep.fed.node_toml("node-0"))
        yield seen
    finally:
        dep.close()


def test_status_is_connected_again_after_a_server_restart(story):
    before, after = story["before"], story["after_restart"]
    assert before.connected, before
    assert story["server_exit"] == 0 and story["server_stop"][0] == 0, story["server_stop"]
    assert after.running and after.connected, after
    assert after.connection.startswith("connected"), after.connection
