"""A real sealed Flower round with compressed updates: the coordinator asks for int8, two sites
honour it, one site's node.toml refuses it; every update opens, is decoded and aggregated, and
the report lists what left each site (coding and bytes) as post-processing."""

from __future__ import annotations

import pytest

from fedmodel.node_config import NODE_FILE
from fedmodel.report.coding import UPDATE_CODING
from fedmodel.report.collect import collect_report
from fedmodel.scenarios import apply_overrides
from fedmodel.sim_nodes import prepare_sim_nodes
from fedmodel.training.checkpoint import load_weights
from server.audit import verify_audit
from server.records import read_metrics
from tests.federation.helpers import run, small_tabular

CLIENTS, PLAIN_SITE = 3, "node-2"


@pytest.fixture(scope="module")
def compressed_run(tmp_path_factory):
    cfg = apply_overrides(
        small_tabular("fedavg", clients=CLIENTS),
        {"security.sealed_updates": True, "compression.method": "int8"},
        "test",
    )
    root = tmp_path_factory.mktemp("compressed")
    prepare_sim_nodes(root / "nodes", cfg)
    node_file = root / "nodes" / PLAIN_SITE / NODE_FILE  # this site decides for itself
    text = node_file.read_text()
    assert "follow_request = true" in text  # every virtual node's file shows the switch
    node_file.write_text(text.replace("follow_request = true", "follow_request = false"))
    return run(cfg, root / "run", sim_nodes_dir=root / "nodes")


def test_every_compressed_update_opens_and_aggregates(compressed_run):
    rounds = read_metrics(compressed_run)
    rows = {c["node"]: c for c in rounds[1]["clients"]}
    assert [c["status"] for c in rows.values()] == ["ok"] * CLIENTS, rows
    assert {n: c["compression"] for n, c in rows.items()} == {
        "node-0": "int8", "node-1": "int8", PLAIN_SITE: "none",
    }  # fmt: skip
    plain = rows[PLAIN_SITE]["bytes_sent"]
    assert all(rows[n]["bytes_sent"] < plain for n in ("node-0", "node-1")), rows
    assert verify_audit(compressed_run).counts["accepted"] == CLIENTS
    before, _ = load_weights(compressed_run / "checkpoints" / "round-0001.safetensors")
    assert all(bool(t.isfinite().all()) for t in before.values())
    assert rounds[1]["server"]["auroc"] > rounds[0]["server"]["auroc"], rounds


def test_report_lists_coding_and_bytes_as_post_processing(compressed_run):
    report = collect_report(compressed_run)
    for client in report.clients:
        coded = [v for v in client.released if v.what == UPDATE_CODING]
        assert len(coded) == 1 and coded[0].protection == "post-processing", client.released
        expected = "none" if client.node == PLAIN_SITE else "int8"
        assert coded[0].label.endswith(expected)
        assert "bytes in 1 replies" in coded[0].detail
        if expected == "int8":
            assert "costs no privacy" in coded[0].detail
