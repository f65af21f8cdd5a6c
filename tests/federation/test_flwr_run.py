"""``flwr run .``: the apps run as a plain Flower app, the way a Flower user starts them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedmodel.config import ConfigError
from fedmodel.scenarios import load_scenario, scenario_to_toml
from server.records import read_metrics
from server.server_app import fit_to_federation
from tests.federation.helpers import small_tabular

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"flower-superlink did not listen on {port}")


@pytest.fixture
def superlink(flwr_home, monkeypatch):
    """A simulation SuperLink we start ourselves, so we know its PID and can kill its group."""
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")  # flower-superexec
    port = _free_port()
    log = open(flwr_home / "superlink.log", "wb")  # noqa: SIM115 - closed in teardown
    proc = subprocess.Popen(
        [BIN / "flower-superlink", "--simulation", "--insecure", "--host", "127.0.0.1",
         "--port", str(port), "--disable-runtime-dependency-installation"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        _wait_for_port(port, proc)
        (flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "test"\n[superlink.test]\n'
            f'address = "127.0.0.1:{port}"\ninsecure = true\n'
        )
        yield "test"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _flwr_run(superlink: str, run_config: str, supernodes: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [BIN / "flwr", "run", ".", superlink, "--stream", "--run-config", run_config,
         "--federation-config", f"num-supernodes={supernodes} client-resources-num-cpus=1"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_flwr_run_dot_runs_the_apps_on_the_federations_nodes(superlink, tmp_path):
    """Without ``num-clients`` the scenario (3 sites in its file) runs on the federation's own
    SuperNodes: 2 here, Flower's local default."""
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(scenario_to_toml(small_tabular("fedavg", clients=3)))
    out = tmp_path / "runs"
    run_config = f"scenario='{scenario}' num-server-rounds=2 out-dir='{out}'"
    result = _flwr_run(superlink, run_config, 2)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run_dir,) = out.iterdir()
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished"
    rounds = read_metrics(run_dir)
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert [c["status"] for c in rounds[2]["clients"]] == ["ok", "ok"]  # the 2 SuperNodes
    assert rounds[2]["clients"][0]["ledger_head"]["count"] == 4  # policy, spend, commit, spend


@pytest.mark.slow  # 58 s at load average 10-16 on 2 cores: a whole flwr-simulation start-up
def test_flwr_run_asking_more_sites_than_the_federation_has_stops_at_once(superlink, tmp_path):
    """Was: ``Waiting for nodes to connect: 2 connected (minimum required: 3)`` until killed."""
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(scenario_to_toml(small_tabular("fedavg")))
    start = time.monotonic()
    refused = _flwr_run(superlink, f"scenario='{scenario}' num-clients=3", 2)
    output = refused.stdout + refused.stderr
    assert "--federation-config num-supernodes=3" in output, output[-3000:]
    assert time.monotonic() - start < 180


@pytest.mark.parametrize(
    ("scenario", "asked", "nodes", "expected"),
    [
        ("tiny", 0, 2, 2),  # the federation's size
        ("tiny", 2, 2, 2),
        ("tiny", 3, 2, "run config num-clients=3 needs 3 sites, but this federation has 2 "
                       "SuperNodes: run `flwr run . --federation-config num-supernodes=3`"),
        ("heart-hospitals", 0, 2, "scenario 'heart-hospitals' needs 4 sites, but this "
                                  "federation has 2 SuperNodes"),  # its 4 hospitals
        ("heart-hospitals", 0, 4, 4),
    ],
)  # fmt: skip
def test_the_scenario_fits_the_federation_or_names_the_size_to_use(
    scenario, asked, nodes, expected
):
    cfg = small_tabular("fedavg", clients=3) if scenario == "tiny" else load_scenario(scenario)
    if isinstance(expected, str):
        with pytest.raises(ConfigError) as err:
            fit_to_federation(cfg, asked, nodes)
        assert str(err.value).startswith(expected)
        return
    fitted = fit_to_federation(cfg, asked, nodes)
    assert fitted.federation.num_clients == expected
    assert fitted.strategy.min_nodes(expected) <= expected
