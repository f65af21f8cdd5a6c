"""Every scenario shipped in ``simulations/`` loads, and ``make demo``'s sites accept its delta.

A site refuses a DP round whose delta is above its own default limit, ``1 / (10 n)`` for its
``n`` rows; a demo whose slice left a site with fewer rows would end with "no site trained".
"""

from __future__ import annotations

import pytest

from fedmodel.data.local import client_train_set
from fedmodel.privacy.budget import default_delta_limit
from fedmodel.scenarios import builtin_scenarios, load_scenario


@pytest.mark.parametrize("name", sorted(builtin_scenarios()))
def test_shipped_scenario_loads(name):
    cfg = load_scenario(name)
    assert cfg.name == name


def test_demo_sites_accept_the_demo_delta():
    cfg = load_scenario("mnist-demo")
    for pid in range(cfg.federation.num_clients):
        rows = len(client_train_set(cfg, pid))
        assert cfg.dp.delta <= default_delta_limit(rows), (pid, rows)
