"""SecAgg+ with int8-quantised updates: each site quantises its noised update and decodes it
itself, SecAgg+ field-quantises and masks those floats, and the unmasked aggregate is the mean
of the sites' dequantised updates (within SecAgg+'s own quantisation step)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp

from clients import secagg_client
from fedmodel.compression import LEVELS
from fedmodel.training.checkpoint import load_weights
from server.records import read_metrics
from tests.secagg.test_secagg import CLIENTS, SPY_FILE, run_secagg, spy

spying_app = ClientApp(client_fn=secagg_client.client_fn, mods=[secaggplus_mod, spy])


@pytest.fixture(scope="module")
def quantised_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("secagg-int8")
    return run_secagg(spying_app, {"compression.method": "int8"}, folder / "run")


@pytest.mark.slow  # a second SecAgg+ run (~16 s): test_secagg and the sealed coded run stay
def test_aggregate_is_the_mean_of_the_dequantised_updates(quantised_run):
    rows = read_metrics(quantised_run)[1]["clients"]
    assert [r["status"] for r in rows] == ["ok"] * CLIENTS, rows
    assert {r["compression"] for r in rows} == {"int8, decoded at the site"}
    spies = [np.load(quantised_run / "nodes" / f"node-{k}" / SPY_FILE) for k in range(CLIENTS)]
    state, _ = load_weights(quantised_run / "checkpoints" / "round-0001.safetensors")
    for name, tensor in state.items():
        mean = sum(s[name] for s in spies) / CLIENTS
        np.testing.assert_allclose(tensor.numpy(), mean, atol=1e-4)


def test_what_each_site_masked_is_on_its_int8_grid(quantised_run):
    for k in range(CLIENTS):
        sent = np.load(quantised_run / "nodes" / f"node-{k}" / SPY_FILE)
        for name in (n for n in sent.files if n.startswith("global/")):
            update = sent[name.removeprefix("global/")].astype(np.float64) - sent[name]
            steps = update / (np.abs(update).max() / LEVELS["int8"])
            assert np.abs(steps - np.round(steps)).max() < 0.02, (k, name)
