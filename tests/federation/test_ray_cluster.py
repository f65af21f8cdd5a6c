"""Where Ray runs: a private loopback instance by default, an existing cluster when named.

The cluster test starts a real Ray head on 127.0.0.1 (its own temp dir, no dashboard) in the
foreground (``--block``) in its own session, and stops it by that process group: never a plain
``ray stop``, which would stop every Ray of this user on the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedmodel.cli.main import app
from fedmodel.config import FederationConfig
from fedmodel.ray_backend import (
    LOCAL,
    LOOPBACK_ENV,
    RayBackendError,
    backend_config,
    check_joined,
)
from fedmodel.scenarios import scenario_to_toml
from server.deploy.loopback import kill_group
from server.deploy.processes import free_port, wait_for_port
from server.records import read_metrics
from tests.federation.helpers import run, small_tabular

BIN = Path(sys.executable).parent


def test_a_local_run_is_private_and_declares_every_gpu():
    shared = FederationConfig(client_gpus=0.25)
    init = backend_config(shared, verbose=False, cpu_count=2, gpu_count=4)["init_args"]
    assert init["address"] == LOCAL  # never a cluster found in RAY_ADDRESS or /tmp/ray
    assert init["include_dashboard"] is False
    assert (init["num_cpus"], init["num_gpus"]) == (2, 4)  # all four, not one
    cpu_only = backend_config(FederationConfig(), verbose=False, cpu_count=2, gpu_count=4)
    assert "num_gpus" not in cpu_only["init_args"]  # Ray's own detection, as before
    with pytest.raises(RayBackendError, match="no CUDA device"):
        backend_config(shared, verbose=False, gpu_count=0)


def test_a_cluster_run_brings_no_resources_of_its_own():
    init = backend_config(FederationConfig(client_gpus=0.5), verbose=False, address="10.0.0.5:6379")
    assert init["init_args"]["address"] == "10.0.0.5:6379"
    assert "num_cpus" not in init["init_args"] and "num_gpus" not in init["init_args"]
    assert init["client_resources"] == {"num_cpus": 1.0, "num_gpus": 0.5}


def test_a_bad_ray_address_is_one_line_exit_2(tmp_path):
    path = tmp_path / "scenario.toml"
    path.write_text(scenario_to_toml(small_tabular("fedavg")))
    out = tmp_path / "run"
    args = ["simulate", str(path), "--out", str(out), "--ray-address", "head-node"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln]
    assert len(lines) == 1 and "--ray-address" in lines[0] and "HOST:PORT" in lines[0]
    assert "Traceback" not in result.output and not out.exists()


@pytest.fixture
def ray_head():
    """A one-node Ray cluster on 127.0.0.1, in loopback mode like the test process."""
    port = free_port()
    temp = tempfile.mkdtemp(prefix="rh-", dir="/tmp")  # Ray's socket paths must stay short
    env = {**os.environ, **LOOPBACK_ENV}
    env.pop("RAY_ADDRESS", None)
    log = open(Path(temp) / "ray-start.log", "wb")  # noqa: SIM115 - closed in teardown
    proc = subprocess.Popen(
        [BIN / "ray", "start", "--head", "--block", "--port", str(port),
         "--node-ip-address", "127.0.0.1", "--include-dashboard=false", "--num-cpus", "2",
         "--num-gpus", "0", "--temp-dir", temp, "--disable-usage-stats"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        up = wait_for_port("127.0.0.1", port, timeout=120, alive=lambda: proc.poll() is None)
        assert up, (Path(temp) / "ray-start.log").read_text()[-3000:]
        yield f"127.0.0.1:{port}", Path(temp)
    finally:
        kill_group(proc, timeout=30)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow  # 54 s at load average 11-14 on 2 cores (99 s at 20-30); the quick variant below
def test_a_simulation_joins_an_existing_ray_cluster(ray_head, tmp_path):
    address, temp = ray_head
    run_dir = run(small_tabular("fedavg"), tmp_path / "run", ray_address=address)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished"
    rounds = read_metrics(run_dir)
    assert [c["status"] for c in rounds[1]["clients"]] == ["ok", "ok"]
    # this process was a driver of the head's session, not of a Ray of its own
    drivers = list(temp.glob(f"session_latest/logs/python-core-driver-*_{os.getpid()}.log"))
    assert drivers, sorted(p.name for p in (temp / "session_latest" / "logs").iterdir())


# The quick variant of the cluster test (22 s at load average 11-14, head start included): a real
# head on 127.0.0.1 joined by this process, without a simulation.
def test_the_run_config_ray_address_is_checked_against_the_joined_cluster(ray_head):
    """Under ``flwr run`` Flower's runtime calls ``ray.init`` (from RAY_ADDRESS); the ServerApp
    checks the cluster it joined against run config ``ray-address``."""
    import ray

    address, _ = ray_head
    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        check_joined(address, wait_s=1)
        other = f"127.0.0.1:{free_port()}"
        with pytest.raises(RayBackendError, match=f"RAY_ADDRESS={other}"):
            check_joined(other, wait_s=1)
    finally:
        ray.shutdown()
