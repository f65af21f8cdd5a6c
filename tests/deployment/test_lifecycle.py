"""A node's life cycle on a real loopback deployment (TLS, node authentication).

One federation, started once with ``fedmodel server start`` / ``fedmodel node start`` as an
operator would; ``stop``, ``status`` and ``register-node`` run through typer's runner:

1. node-0 (registered) connects; ``rogue`` (a valid key the coordinator never registered, the
   default 75 s activation grace) is refused within seconds, with the coordinator's
   registration command in its one-line error. A second ``node start`` of node-0 is refused.
2. ``fedmodel server stop`` stops the SuperLink by its pid file; node-0's status says the
   server is unreachable; the SuperLink starts again, node-0 reconnects on its own and its
   status says connected again (it used to stay at "connection trouble" for ever).
3. The coordinator runs the command from rogue's message, in its folder; rogue then connects.
4. ``fedmodel node stop`` stops node-0 by its pid file (exit 0), leaving its keys and ledger as
   they were; status says registered but offline; a second stop says "not running".
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clients.daemon.status import node_status
from fedmodel.cli.node_cmd import app as node_app
from fedmodel.cli.server_cmd import app as server_app
from server.deploy.loopback import Federation, kill_group, loopback, start, wait_for_count

START_TIMEOUT = 120.0
RECONNECT_TIMEOUT = 90.0  # Flower's backoff between reconnection attempts grows to ~20 s
FAST_REFUSAL = 45.0  # a cold start on a loaded 2-core host is ~10 s; the old grace was 75 s
CONNECTED = "SuperNode ID:"
RECONNECTED = "[supernode] INFO :      Connection successful after"  # not the launcher's
READY = "SuperLink ready"
RUNS = "runs: "


class Loopback:
    """The processes of one loopback federation; ``close`` kills every group it started."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fed: Federation = loopback(
            root, ["node-0", "rogue"], ["node-0"], deployment={"*": {"warm_launcher": False}}
        )
        self.procs: list[subprocess.Popen] = []

    def out(self, name: str) -> Path:
        return self.root / f"{name}.out"

    def node_log(self, name: str) -> Path:
        return self.root / name / "logs" / "node.log"

    def start(self, name: str, *args: str) -> subprocess.Popen:
        self.procs.append(start(list(args), self.out(name)))
        return self.procs[-1]

    def start_server(self, starts: int = 1) -> subprocess.Popen:
        proc = self.start("server", "server", "start", "--config", str(self.fed.server_toml))
        wait_for_count(self.out("server"), READY, starts, START_TIMEOUT, proc)
        return proc

    def start_node(self, name: str) -> subprocess.Popen:
        return self.start(name, "node", "start", "--config", str(self.fed.node_toml(name)))

    def register_rogue(self) -> None:
        """What the coordinator does with the files rogue sends: a [[nodes]] entry."""
        keys = self.root / "rogue" / "keys"
        with open(self.fed.server_toml, "a") as fh:
            fh.write(f'\n[[nodes]]\nname = "rogue"\npartition_id = 1\n'
                     f'auth_public_key = "{keys / "rogue.auth.pub"}"\n'
                     f'ledger_public_key = "{keys / "rogue.ed25519.pub"}"\n')  # fmt: skip

    def close(self) -> None:
        for proc in reversed(self.procs):
            kill_group(proc)


# a loopback deployment story (~55 s); make test keeps test_loopback's deployment
pytestmark = pytest.mark.slow


def cli(app, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def run_in(folder: Path, command: str) -> tuple[int, str]:
    """A ``fedmodel server ...`` command line, as printed, run in ``folder``, in this process."""
    argv = shlex.split(command)
    assert argv[:2] == ["fedmodel", "server"], command
    here = Path.cwd()
    os.chdir(folder)
    try:
        return cli(server_app, *argv[2:])
    finally:
        os.chdir(here)


def wait_status(config: Path, link: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while (status := node_status(config)).link != link:
        if time.monotonic() > deadline:
            raise AssertionError(f"status never {link!r}: {status}")
        time.sleep(0.2)
    return status


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    dep = Loopback(tmp_path_factory.mktemp("lifecycle"))
    node0, rogue = dep.fed.node_toml("node-0"), dep.fed.node_toml("rogue")
    seen: dict = {"dep": dep}
    try:
        server = dep.start_server()
        node = dep.start_node("node-0")
        started = time.monotonic()
        refused = dep.start_node("rogue")
        seen["rogue_exit"] = refused.wait(timeout=START_TIMEOUT)
        seen["rogue_seconds"] = time.monotonic() - started
        seen["rogue_status"] = node_status(rogue)
        wait_for_count(dep.node_log("node-0"), CONNECTED, 1, START_TIMEOUT, node)
        seen["connected"] = wait_status(node0, "connected")
        seen["second_start"] = cli(node_app, "start", "--config", str(node0))

        seen["server_stop"] = cli(server_app, "stop", "--config", str(dep.fed.server_toml))
        seen["server_exit"] = server.wait(timeout=60)
        seen["server_down"] = wait_status(node0, "server-unreachable")
        server = dep.start_server(starts=2)
        wait_for_count(dep.node_log("node-0"), RECONNECTED, 1, RECONNECT_TIMEOUT, node)
        seen["after_restart"] = node_status(node0)

        dep.register_rogue()
        command = dep.out("rogue").read_text().rsplit(RUNS, 1)[-1].strip()
        seen["register"] = run_in(dep.fed.server_toml.parent, command)
        welcome = dep.start_node("rogue")
        wait_for_count(dep.node_log("rogue"), CONNECTED, 1, START_TIMEOUT, welcome)
        seen["rogue_registered"] = wait_status(rogue, "connected")

        kept = {"keys": digest(dep.root / "node-0" / "keys")}
        seen["node_stop"] = cli(node_app, "stop", "--config", str(node0))
        seen["node_exit"] = node.wait(timeout=30)
        seen["kept"] = kept == {"keys": digest(dep.root / "node-0" / "keys")}
        seen["offline"] = node_status(node0)
        seen["node_stop_again"] = cli(node_app, "stop", "--config", str(node0))
        yield seen
    finally:
        dep.close()


def test_unregistered_key_fails_fast_with_the_registration_command(story):
    out = story["dep"].out("rogue").read_text()
    assert story["rogue_exit"] == 3, out
    assert story["rogue_seconds"] < FAST_REFUSAL, (story["rogue_seconds"], out)
    assert "retrying" not in out, out
    (error,) = [li for li in out.splitlines() if li.startswith("error:")]
    assert "never accepted its auth key" in error and "rogue.auth.pub" in error, error
    assert error.endswith("runs: fedmodel server register-node --config server.toml --name rogue")
    status = story["rogue_status"]
    assert status.link == "never-registered" and not status.connected, status
    assert "fedmodel server register-node" in status.connection


def test_the_registration_command_in_the_message_lets_the_node_in(story):
    code, out = story["register"]
    assert code == 0 and "node rogue: registered" in out, out
    assert story["rogue_registered"].connected


def test_a_second_start_of_a_running_node_is_refused(story):
    code, out = story["second_start"]
    assert code == 2 and "node node-0 is already running (pid" in out, out


def test_status_after_a_server_restart_is_connected_again(story):
    assert story["connected"].connected
    assert story["server_stop"][0] == 0 and story["server_exit"] == 0, story["server_stop"]
    assert "stopped the SuperLink (pid" in story["server_stop"][1]
    down = story["server_down"]
    assert down.running and not down.connected and "server unreachable" in down.connection
    after = story["after_restart"]
    assert after.running and after.connected and after.link == "connected", after
    assert after.connection.startswith("connected (SuperNode id"), after.connection


def test_node_stop_by_pid_file(story):
    code, out = story["node_stop"]
    assert code == 0 and out.startswith("stopped node node-0 (pid"), out
    assert "killed" not in out  # SIGTERM sufficed: the supervisor stopped its children itself
    assert story["node_exit"] == 0  # a clean stop, not a failure for systemd
    assert not (story["dep"].root / "node-0" / "state" / "node.pid").exists()
    assert story["kept"]
    offline = story["offline"]
    assert not offline.running and offline.link == "registered-offline", offline
    code, out = story["node_stop_again"]
    assert code == 0 and "node node-0 is not running (no pid file" in out, out
