"""Two hospitals on a real loopback deployment (TLS, node auth, sealed updates), each training
on its own CSV export: a declared task, ``node.toml [data] path``, nothing pooled.

The operator guide's example, end to end: the coordinator's scenario carries the heart
``[task]``; each site's node.toml maps its own file (one renames a column); the run trains both
sites, and no patient id from either file reaches the relay's database, the coordinator's run
folder, or any log of the coordinator or the sites.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from fedmodel.crypto.pin import write_pin
from fedmodel.data.heart import heart_task, write_heart_site_files
from fedmodel.privacy.ledger import verify_ledger
from fedmodel.scenarios import apply_overrides, load_scenario, scenario_to_toml
from server.deploy.config import load_server_config
from server.deploy.loopback import kill_group, loopback, start, wait_for_count
from server.deploy.submit import RunRequest, submit_run
from server.records import read_metrics
from server.sealing import load_server_keys
from tests.sealing.relay_scan import relay_bytes

SITES = ("cleveland", "hungary")
START_TIMEOUT = 240.0


# a second loopback deployment (~55 s): make test keeps test_loopback's deployment, and
# own files in simulation (tests/sitedata)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("own-files")
    files = write_heart_site_files(root / "exports")
    renamed = files["hungary"][0]  # this site's export calls thalch "max_heart_rate"
    pd.read_csv(renamed).rename(columns={"thalch": "max_heart_rate"}).to_csv(renamed, index=False)
    data = {
        "cleveland": {"path": str(files["cleveland"][0]), "test_path": str(files["cleveland"][1])},
        "hungary": {"path": str(renamed), "test_fraction": 0.2,
                    "columns": {"max_heart_rate": "thalch"}},
    }  # fmt: skip
    fed = loopback(root / "fed", list(SITES), list(SITES), round_timeout=120.0, data=data,
                   policies={s: {"allowed_tasks": ["heart"]} for s in SITES})  # fmt: skip
    scenario = apply_overrides(
        load_scenario("heart-hospitals"),
        {"name": "heart-own-files", "federation.num_clients": 2, "strategy.min_train_nodes": 2,
         "security.sealed_updates": True, "evaluation.server": "auto"},
        "test",
    ).model_copy(update={"task": heart_task(), "client_budgets": {}})  # fmt: skip
    scenario_path = root / "scenario.toml"
    scenario_path.write_text(scenario_to_toml(scenario))
    procs = []
    try:
        server_out = root / "server.out"
        procs.append(start(["server", "start", "--config", str(fed.server_toml)], server_out))
        wait_for_count(server_out, "SuperLink ready", 1, START_TIMEOUT, procs[0])
        keys = load_server_keys(fed.root / "coordinator" / "state" / "server-keys")
        for site in SITES:
            write_pin(fed.node_toml(site).parent, keys.exchange_fingerprint, keys.verify_key_path)
            proc = start(
                ["node", "start", "--config", str(fed.node_toml(site))], root / f"{site}.out"
            )
            procs.append(proc)
        for site, proc in zip(SITES, procs[1:], strict=True):
            wait_for_count(fed.root / site / "logs" / "node.log", "warm launcher ready", 1,
                           START_TIMEOUT, proc)  # fmt: skip
        run_dir = root / "runs" / "own"
        request = RunRequest(str(scenario_path), 1, run_dir, min_nodes=2)
        submit_run(load_server_config(fed.server_toml), request, lambda row: None)
        for proc in reversed(procs):
            kill_group(proc)
        yield {"root": root, "fed": fed, "files": files, "run_dir": run_dir}
    finally:
        for proc in reversed(procs):
            kill_group(proc)


def test_both_sites_train_on_their_own_files(federation):
    run_dir = federation["run_dir"]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["transport"]["sealed_updates"] is True
    (row,) = [r for r in read_metrics(run_dir) if r["round"] == 1]
    assert {c["node"]: c["status"] for c in row["clients"]} == dict.fromkeys(SITES, "ok")
    cleveland_rows = len(pd.read_csv(federation["files"]["cleveland"][0]))
    ledger = verify_ledger(federation["fed"].root / "cleveland" / "ledger")
    (spend,) = [e for e in ledger.entries if e.spends]
    assert spend.dataset_size == cleveland_rows  # its own file, all of its training rows


def test_no_patient_id_reaches_the_relay_the_coordinator_or_a_log(federation):
    root, fed = federation["root"], federation["fed"]
    ids = [
        pid.encode()
        for train, test in federation["files"].values()
        for pid in pd.concat([pd.read_csv(train), pd.read_csv(test)])["patient_id"]
    ]
    blobs = [relay_bytes(fed.root / "coordinator" / "state")]
    blobs += [p.read_bytes() for p in root.rglob("*") if p.is_file() and p.suffix != ".csv"
              and "exports" not in p.parts]  # fmt: skip
    assert any(b"cleveland" in b for b in blobs)  # the scan reads the right places
    found = [pid for pid in ids[::5] if any(pid in blob for blob in blobs)]
    assert found == []
