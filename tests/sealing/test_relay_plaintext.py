"""A real loopback deployment with sealing on: the SuperLink's database holds no plaintext
update (slow: a SuperLink, two SuperNodes and two runs; ``make test-all``)."""

from __future__ import annotations

import pytest

from server.deploy.loopback import wait_for_count
from tests.deployment.test_loopback import START_TIMEOUT, Deployment
from tests.sealing.relay_scan import assert_relay_never_saw_plaintext


@pytest.mark.slow
def test_relay_database_holds_no_plaintext_update(tmp_path):
    dep = Deployment(tmp_path)
    try:
        dep.start("server", "server", "start", "--config", str(dep.fed.server_toml))
        wait_for_count(dep.out("server"), "SuperLink ready", 1, START_TIMEOUT, dep.procs["server"])
        dep.pin_nodes()
        for name in ("node-0", "node-1"):
            dep.start_node(name)
        for name in ("node-0", "node-1"):
            dep.wait_ready(name)
        dep.submit("plain", dp=True, rounds=1)
        dep.submit("sealed", dp=True, rounds=1, sealed=True)
    finally:
        dep.close()
    state = dep.root / "coordinator" / "state"
    assert_relay_never_saw_plaintext(state, dep.run_dir("sealed"), dep.run_dir("plain"))
