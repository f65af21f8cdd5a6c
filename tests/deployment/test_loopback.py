"""A real loopback deployment: SuperLink + SuperNodes with TLS and node authentication.

One federation, started with ``fedmodel server start`` / ``fedmodel node start`` as an operator
would, every scenario folded into as few runs as possible (each run costs a ServerApp start):

1. SuperLink (TLS, node auth, persistent state), node-0 and node-1 (registered), ``rogue`` (a
   valid key nobody registered; no retry grace): rogue is refused.
2. Run A (``fedmodel server run``), DP-SGD, 3 rounds, the default minimum (what FedAvg needs:
   one site): node-1 is killed (SIGKILL, its whole process group) as soon as round 1 is
   recorded; round 2 gives up on it after the round timeout (a named row: no reply), and
   round 3 goes on with node-0 without waiting for node-1 again.
3. node-1 restarts (after a crash). Run C asks for no DP: node-1 (policy: require_dp) refuses,
   node-0 (whose policy allows it, and which has no cap) trains; the refusal is a row in
   metrics.jsonl, and node-0's ledger now says its epsilon is unbounded.
4. Run B, DP-SGD with sealed updates (the sites pinned the ServerApp's keys that ``fedmodel
   server start`` made), 1 round: node-1's ledger continues where the crash left it.

Runs C and B are submitted in-process (``submit_run``, what the CLI calls) and ``status`` /
``stop`` run through typer's runner, to spare CLI start-ups; run A goes through the CLI.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clients.daemon.status import node_status
from fedmodel.cli.node_cmd import app as node_app
from fedmodel.cli.server_cmd import app as server_app
from fedmodel.scenarios import scenario_to_toml
from server.deploy.config import load_server_config
from server.deploy.loopback import kill_group, loopback, start, wait_for_count
from server.deploy.submit import RunRequest, submit_run
from server.records import read_metrics
from server.sealing import load_server_keys
from tests.deployment.bundles import small_scenario
from tests.sealing.relay_scan import assert_relay_never_saw_plaintext

ROUND_TIMEOUT = 30.0  # a legit round takes 2-15 s here, depending on how loaded the host is
START_TIMEOUT = 240.0
RUN_TIMEOUT = 420.0
READY = "warm launcher ready"
CONNECTED = "SuperNode ID:"


class Deployment:
    """The processes of one loopback federation; ``close`` kills every group it started."""

    def __init__(self, root: Path) -> None:
        self.fed = loopback(
            root,
            ["node-0", "node-1", "rogue"],
            ["node-0", "node-1"],
            round_timeout=ROUND_TIMEOUT,
            # runs A and C are plain on purpose (C is the relay scan's positive control): these
            # sites lift the deployed default of requiring sealed updates by name
            policies={
                "node-0": {"require_dp": False, "require_sealed_updates": False},
                "node-1": {"require_sealed_updates": False},
                "rogue": {"require_sealed_updates": False},
            },
            unbudgeted=["node-0"],  # a site that may train without DP has no finite cap
            deployment={"rogue": {"activation_grace": 0.0, "warm_launcher": False}},
        )
        self.root = root
        self.procs: dict[str, subprocess.Popen] = {}
        for dp, sealed in ((True, False), (False, False), (True, True)):
            self.scenario(dp, sealed).write_text(scenario_to_toml(small_scenario(dp, sealed)))

    def scenario(self, dp: bool, sealed: bool = False) -> Path:
        return self.root / f"dp-{dp}-sealed-{sealed}.toml"

    def pin_nodes(self) -> None:
        """What each site does once with the fingerprint the coordinator reads out to it."""
        keys = load_server_keys(self.root / "coordinator" / "state" / "server-keys")
        for name in ("node-0", "node-1"):
            _cli(node_app, "pin", self.fed.node_toml(name), "--exchange-fingerprint",
                 keys.exchange_fingerprint, "--verify-key", str(keys.verify_key_path))  # fmt: skip

    def out(self, name: str) -> Path:
        return self.root / f"{name}.out"

    def start(self, name: str, *args: str) -> subprocess.Popen:
        self.procs[name] = start(list(args), self.out(name))
        return self.procs[name]

    def start_node(self, name: str) -> None:
        self.start(name, "node", "start", "--config", str(self.fed.node_toml(name)))

    def wait_ready(self, name: str, starts: int = 1) -> None:
        """The n-th start of ``name`` is connected and its launcher is warm."""
        log = self.root / name / "logs" / "node.log"
        for text in (CONNECTED, READY):
            wait_for_count(log, text, starts, START_TIMEOUT, self.procs[name])

    def run_dir(self, name: str) -> Path:
        return self.root / "runs" / name

    def submit(self, name: str, dp: bool, rounds: int, sealed: bool = False) -> Path:
        scenario = str(self.scenario(dp, sealed))
        request = RunRequest(scenario, rounds, self.run_dir(name), min_nodes=2)
        return submit_run(load_server_config(self.fed.server_toml), request, lambda row: None)

    def close(self) -> None:
        for proc in reversed(list(self.procs.values())):
            kill_group(proc)


def _wait_for_round(run_dir: Path, rnd: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        if any(r["round"] == rnd for r in read_metrics(run_dir)):
            return
        time.sleep(0.1)
    raise AssertionError(f"round {rnd} never recorded in {run_dir}")


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    """Play the whole story once; the tests below check what it left behind."""
    dep = Deployment(tmp_path_factory.mktemp("loopback"))
    outcome: dict = {"dep": dep}
    try:
        dep.start("server", "server", "start", "--config", str(dep.fed.server_toml))
        wait_for_count(dep.out("server"), "SuperLink ready", 1, START_TIMEOUT, dep.procs["server"])
        dep.pin_nodes()
        for name in ("node-0", "node-1", "rogue"):
            dep.start_node(name)
        dep.wait_ready("node-0")
        dep.wait_ready("node-1")
        outcome["rogue_exit"] = dep.procs["rogue"].wait(timeout=START_TIMEOUT)

        run_a = dep.start("run-a", "server", "run", "--config", str(dep.fed.server_toml),
                          "--scenario", str(dep.scenario(True)), "--rounds", "3",
                          "--out", str(dep.run_dir("a")))  # fmt: skip
        _wait_for_round(dep.run_dir("a"), 1, run_a)
        kill_group(dep.procs["node-1"], signal.SIGKILL)
        killed = time.monotonic()
        outcome["a_exit"] = run_a.wait(timeout=RUN_TIMEOUT)
        outcome["a_after_kill_s"] = time.monotonic() - killed

        dep.start_node("node-1")
        dep.wait_ready("node-1", starts=2)
        dep.submit("c", dp=False, rounds=1)
        dep.submit("b", dp=True, rounds=1, sealed=True)
        outcome["status"] = node_status(dep.fed.node_toml("node-1"))
        outcome["status_text"] = _cli(node_app, "status", dep.fed.node_toml("node-1"))
        outcome["node_stop"] = _cli(node_app, "stop", dep.fed.node_toml("node-0"))
        outcome["node_0_exit"] = dep.procs["node-0"].wait(timeout=60)
        outcome["server_stop"] = _cli(server_app, "stop", dep.fed.server_toml)
        outcome["server_exit"] = dep.procs["server"].wait(timeout=60)
        yield outcome
    finally:
        dep.close()


def _cli(app, command: str, config: Path, *args: str) -> str:
    """A fedmodel command in this process (the CLI's start-up is the slow part of a test)."""
    result = CliRunner().invoke(app, [command, "--config", str(config), *args])
    assert result.exit_code == 0, result.output
    return result.output


def _clients(run_dir: Path, rnd: int) -> dict[str, dict]:
    (row,) = [r for r in read_metrics(run_dir) if r["round"] == rnd]
    return {c["node"]: c for c in row["clients"]}


def test_unregistered_node_is_refused(story):
    out = story["dep"].out("rogue").read_text()
    assert story["rogue_exit"] == 3, out
    assert "refused this node" in out and "exit code 305" in out, out
    assert "rogue.auth.pub" in out  # tells the operator what to send the coordinator


def test_run_folder_written_over_tls_and_node_auth(story):
    dep = story["dep"]
    assert story["a_exit"] == 0, dep.out("run-a").read_text()[-3000:]
    run_dir = dep.run_dir("a")
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["engine"] == "deployment"
    assert info["transport"] == {
        "tls": True, "node_auth": True, "sealed_updates": False, "secure_aggregation": False,
    }  # fmt: skip
    checkpoints = [f"checkpoints/round-000{r}.safetensors" for r in (1, 2, 3)]
    for rel in ("scenario.toml", "metrics.jsonl", "clients.csv", "model/model.safetensors",
                *checkpoints):  # fmt: skip
        assert (run_dir / rel).is_file(), rel
    assert [r["round"] for r in read_metrics(run_dir)] == [0, 1, 2, 3]
    first = _clients(run_dir, 1)
    assert {n: c["status"] for n, c in first.items()} == {"node-0": "ok", "node-1": "ok"}
    # a policy entry, then the round's spend: the head a reply names
    assert all(c["epsilon"] > 0 and c["ledger_head"]["count"] == 2 for c in first.values())
    assert not (run_dir / "nodes").exists()  # real nodes keep their own disks


def test_killed_node_does_not_hang_the_run(story):
    """The lost site is one named row with its reason, printed live; the rounds after it do
    not wait for it beyond one round timeout."""
    dep = story["dep"]
    second = _clients(dep.run_dir("a"), 2)
    assert second["node-0"]["status"] == "ok"
    assert second["node-1"]["status"] == "error", second  # named, not flower-<id>
    assert not [n for n in second if n.startswith("flower-")], second
    third = _clients(dep.run_dir("a"), 3)
    assert third["node-0"]["status"] == "ok" and set(third) <= {"node-0", "node-1"}, third
    assert story["a_after_kill_s"] < 3 * ROUND_TIMEOUT, story["a_after_kill_s"]
    out = dep.out("run-a").read_text()
    assert "round 2: accuracy" in out and "(1 of 2 sites trained)" in out, out
    assert "  node-1 error: " in out, out


def test_no_dp_run_is_refused_by_a_node_that_requires_dp(story):
    clients = _clients(story["dep"].run_dir("c"), 1)
    assert clients["node-1"]["status"] == "refused"
    assert "requires DP" in clients["node-1"]["reason"]
    assert clients["node-0"]["status"] == "ok"  # its own policy allows it
    assert "epsilon" not in clients["node-0"]  # no noise: nothing to account but "unbounded"


def test_sealed_run_over_the_deployment(story):
    run_dir = story["dep"].run_dir("b")
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["transport"]["sealed_updates"] is True
    assert {c["status"] for c in _clients(run_dir, 1).values()} == {"ok"}


def test_restarted_node_continues_its_ledger(story):
    dep = story["dep"]
    before = _clients(dep.run_dir("a"), 1)["node-1"]
    after = _clients(dep.run_dir("b"), 1)["node-1"]
    assert after["ledger_head"]["count"] > before["ledger_head"]["count"]
    assert after["epsilon"] > before["epsilon"]
    status = story["status"]
    assert status.running and status.connected, status
    assert status.ledger_entries == after["ledger_head"]["count"] + 1  # and the spend's commit
    assert status.epsilon_spent == pytest.approx(after["epsilon"], rel=1e-6)
    assert status.epsilon_left == pytest.approx(50.0 - after["epsilon"], rel=1e-6)


def test_status_and_stop_commands(story):
    text = story["status_text"]
    assert "connected (SuperNode id" in text and "left" in text, text
    assert story["node_stop"].startswith("stopped node node-0 (pid")
    assert story["node_0_exit"] == 0  # SIGTERM: a clean stop, not a failure for systemd
    assert story["server_stop"].startswith("stopped the SuperLink (pid")
    assert story["server_exit"] == 0


def test_relay_database_holds_no_plaintext_of_the_sealed_run(story):
    """Every byte of the SuperLink's state (SQLite keeps freed pages): run C's plain reply is
    there, as the positive control; run B's sealed payloads never are."""
    dep = story["dep"]
    assert story["server_exit"] == 0  # the database is closed and complete
    state = dep.root / "coordinator" / "state"
    assert_relay_never_saw_plaintext(state, dep.run_dir("b"), dep.run_dir("c"))


def test_unsealed_run_reports_from_its_folder_alone_with_the_published_server_key(story, tmp_path):
    """Run A (plain updates): no site's ledger or node.toml reaches the coordinator by hand, yet
    the report verifies both sites with their signed caps, and the audit log verifies with the
    ServerApp key the sites pinned (and with no other)."""
    from fedmodel.crypto.keys import generate_signing_key, save_public_key
    from fedmodel.report.collect import collect_report
    from server.audit import verify_audit

    dep = story["dep"]
    run_dir = dep.run_dir("a")
    published = dep.root / "coordinator" / "state" / "server-keys" / "server.ed25519.pub"
    report = collect_report(run_dir, server_key=published)
    clients = {c.node: c for c in report.clients}
    assert clients["node-1"].cap is not None and clients["node-1"].cap.epsilon == 50.0
    assert clients["node-0"].cap is None and clients["node-0"].cap_status == "uncapped"
    assert all(c.ledger.key_pinned and "ledgers" in c.ledger.path for c in clients.values())
    assert report.audit is not None and report.audit.verified, report.audit
    assert verify_audit(run_dir, published).ok
    other = tmp_path / "other.pub"
    save_public_key(generate_signing_key().public_key(), other)
    assert verify_audit(run_dir, other).first_break.kind == "bad-signature"
    assert not (run_dir / "server-keys" / "server.ed25519").exists()  # no private half here
