"""A loopback deployment attacked from outside and from the coordinator's side.

One federation (TLS, node authentication, one registered node), started once:

* an outsider who holds only the public ``ca.crt`` points ``flwr`` at the public port and tries
  to register a node, list runs and submit a run: all refused, before any Flower handler runs;
  the coordinator's own ``flwr`` on the loopback control port works;
* the coordinator (as a compromised one would) submits two bundles that are not the site's
  code: one naming its own ``clientapp`` (whose import writes a marker file), one with fedmodel's
  code changed by a line. The node answers both with an error and never runs their code.
"""

from __future__ import annotations

import json
import ssl
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from fedmodel.crypto.keys import generate_node_identity
from fedmodel.scenarios import scenario_to_toml
from server.deploy import submit
from server.deploy.config import load_server_config
from server.deploy.flower import CONNECTION, flower_bin, flower_env, write_connection
from server.deploy.loopback import Federation, kill_group, loopback, start, wait_for_count
from server.deploy.processes import ServiceError
from server.records import read_metrics
from tests.deployment.bundles import bundle, rogue_clientapp, small_scenario

START_TIMEOUT = 240.0
ROUND_TIMEOUT = 30.0


@dataclass
class Deployment:
    root: Path
    fed: Federation
    scenario: Path

    @property
    def ca(self) -> Path:
        return self.root / "node-0" / "pki" / "ca.crt"

    @property
    def coordinator_home(self) -> Path:
        return load_server_config(self.fed.server_toml).flwr_home


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    root = tmp_path_factory.mktemp("trust")
    fed = loopback(
        root,
        ["node-0"],
        ["node-0"],
        round_timeout=ROUND_TIMEOUT,
        policies={"node-0": {"require_sealed_updates": False}},  # the runs here are plain
    )
    scenario = root / "scenario.toml"
    scenario.write_text(scenario_to_toml(small_scenario(dp=True, nodes=1)))
    procs: list[subprocess.Popen] = []
    try:
        server_out = root / "server.out"
        procs.append(start(["server", "start", "--config", str(fed.server_toml)], server_out))
        wait_for_count(server_out, "SuperLink ready", 1, START_TIMEOUT, procs[0])
        procs.append(start(["node", "start", "--config", str(fed.node_toml("node-0"))],
                           root / "node-0.out"))  # fmt: skip
        node_log = root / "node-0" / "logs" / "node.log"
        for text in ("SuperNode ID:", "warm launcher ready"):
            wait_for_count(node_log, text, 1, START_TIMEOUT, procs[1])
        yield Deployment(root, fed, scenario)
    finally:
        for proc in reversed(procs):
            kill_group(proc)


def _flwr(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [flower_bin("flwr"), *args], env=flower_env(home), capture_output=True, text=True,
        timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def _json(out: str) -> dict:
    try:
        return json.loads(out[out.index("{") :])
    except ValueError:
        return {}


def test_outsider_is_refused_on_the_public_port(deployment):
    """With the public CA certificate alone: no registration, no listing, no run."""
    home = deployment.root / "outsider-home"
    write_connection(home, f"127.0.0.1:{deployment.fed.port}", deployment.ca)
    generate_node_identity("intruder", deployment.root / "intruder")
    key = deployment.root / "intruder" / "intruder.auth.pub"
    commands = [
        ["supernode", "register", str(key), CONNECTION, "--name", "intruder", "--format", "json"],
        ["ls", CONNECTION, "--format", "json"],
        ["run", str(submit.app_root()), CONNECTION, "--format", "json"],
    ]
    with ThreadPoolExecutor(3) as pool:
        register, listing, run = pool.map(lambda args: _flwr(home, *args), commands)
    for done in (register, listing, run):  # flwr exits 0 with "success": false in JSON
        answer = _json(done.stdout)
        assert answer and not answer.get("success"), done.stdout + done.stderr
        assert "403 Forbidden" in answer.get("error-message", ""), answer

    # the refusal comes before Flower: a Control route answered by fedmodel's gate
    tls = ssl.create_default_context(cafile=str(deployment.ca))
    reply = httpx.post(f"https://127.0.0.1:{deployment.fed.port}/v1/control/list-runs",
                       verify=tls, content=b"")  # fmt: skip
    assert reply.status_code == 403 and "loopback" in reply.text, reply.text

    # ... while the coordinator, on its loopback control port, sees everything
    own = _flwr(deployment.coordinator_home, "supernode", "list", CONNECTION, "--format", "json")
    assert own.returncode == 0 and _json(own.stdout).get("success"), own.stdout + own.stderr
    assert "intruder" not in own.stdout


def _submit(dep: Deployment, app: Path, name: str) -> tuple[Path, str | None]:
    """``fedmodel server run`` with ``app`` as the bundle: what a compromised coordinator sends."""
    run_dir = dep.root / "runs" / name
    request = submit.RunRequest(str(dep.scenario), 1, run_dir, min_nodes=1)
    problem = None
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(submit, "APP_ROOT", app)
        try:
            submit.submit_run(load_server_config(dep.fed.server_toml), request, lambda row: None)
        except ServiceError as err:
            problem = str(err)
    return run_dir, problem


def _only_client(run_dir: Path) -> dict:
    (row,) = [r for r in read_metrics(run_dir) if r["round"] == 1]
    (client,) = row["clients"]
    return client


def test_bundle_with_its_own_clientapp_never_runs_on_the_site(deployment):
    marker = deployment.root / "rogue-code-ran"
    app = bundle(
        deployment.root / "rogue-app",
        clientapp="rogue_app:app",
        extra={"rogue_app/__init__.py": rogue_clientapp(marker)},
    )
    run_dir, problem = _submit(deployment, app, "rogue")
    assert not marker.exists(), marker.read_text()
    assert not (deployment.root / "node-0" / "state" / "flwr-home" / "apps").exists()  # no install
    client = _only_client(run_dir)
    assert client["status"] == "error", (client, problem)
    assert client["reason"].startswith("code-gate/clientapp:"), client
    assert "rogue_app:app" in client["reason"] and "/" + "tmp" not in client["reason"]


def test_bundle_with_changed_fedmodel_code_is_refused(deployment):
    edit = ("clients/client_app.py", "\n# one line the site never installed\n")
    app = bundle(deployment.root / "changed-app", edit=edit)
    run_dir, problem = _submit(deployment, app, "changed")
    client = _only_client(run_dir)
    assert client["status"] == "error", (client, problem)
    assert client["reason"].startswith("code-gate/code:"), client
    assert "clients/client_app.py" in client["reason"]
