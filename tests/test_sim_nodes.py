"""Ten thousand virtual nodes: folders made on first use, accountant results shared by history.

The nodes of a large simulation are declared (``sim-nodes.json``) and each makes its own folder,
key included, on its first request. These tests hold the lines that must not move: a lazily made
node gets its own key and its own cap, the server's registry reads a key only from the declared
node's folder, a node's ledger still verifies after rounds whose epsilons came from the shared
accountant cache, and that cache never answers one history with another's epsilon.
"""

from __future__ import annotations

import pytest

from fedmodel.config import ConfigError, PrivacyBudget
from fedmodel.crypto.keys import fingerprint, load_signing_key, load_verify_key, public_path
from fedmodel.crypto.pin import PIN_FILE
from fedmodel.node_config import NODE_FILE, load_node_config
from fedmodel.privacy import accountant
from fedmodel.privacy.ledger import verify_ledger
from fedmodel.scenarios import tiny_tabular
from fedmodel.sim_nodes import declare_sim_nodes, ensure_sim_node, pin_server
from server.sealing import SimNodeKeys, ensure_server_keys, signers_from_sim_nodes
from tests.nodebench import NodeBench, reply_kind

CAP = PrivacyBudget(epsilon=50.0, delta=1e-5)
OWN_CAP = PrivacyBudget(epsilon=7.0, delta=1e-5)


def declared(tmp_path, nodes: int = 4):
    scenario = tiny_tabular("lazy", nodes, "test").model_copy(
        update={"budget": CAP, "client_budgets": {2: OWN_CAP}}
    )
    nodes_dir = tmp_path / "nodes"
    declare_sim_nodes(nodes_dir, scenario)
    keys = ensure_server_keys(tmp_path / "server-keys")
    pin_server(nodes_dir, keys.exchange_fingerprint, keys.verify_key_path)
    return nodes_dir


def node_key(folder):
    return load_signing_key(load_node_config(folder / NODE_FILE).signing_key)


def test_a_declared_node_makes_its_folder_on_first_use_with_its_own_cap_and_pin(tmp_path):
    nodes_dir = declared(tmp_path)
    assert not list(nodes_dir.glob("node-*"))  # declaring makes no folder
    folder = ensure_sim_node(nodes_dir, 2)
    node = load_node_config(folder / NODE_FILE)
    assert node.name == "node-2" and node.budget.epsilon == OWN_CAP.epsilon
    assert (node.data.partition_id, node.data.num_partitions) == (2, 4)
    assert (folder / PIN_FILE).read_bytes() == (nodes_dir / PIN_FILE).read_bytes()
    assert (folder / "ledger").is_dir()
    assert load_node_config(ensure_sim_node(nodes_dir, 0) / NODE_FILE).budget.epsilon == CAP.epsilon
    assert sorted(p.name for p in nodes_dir.glob("node-*")) == ["node-0", "node-2"]
    with pytest.raises(ConfigError, match="not one of the 4 declared"):
        ensure_sim_node(nodes_dir, 4)


def test_each_node_keeps_its_own_key(tmp_path):
    nodes_dir = declared(tmp_path)
    first = fingerprint(node_key(ensure_sim_node(nodes_dir, 0)))
    other = fingerprint(node_key(ensure_sim_node(nodes_dir, 1)))
    assert first != other
    assert fingerprint(node_key(ensure_sim_node(nodes_dir, 0))) == first  # never remade


def test_the_registry_reads_a_key_only_from_the_declared_nodes_folder(tmp_path):
    nodes_dir = declared(tmp_path)
    registry = signers_from_sim_nodes(nodes_dir)
    assert isinstance(registry, SimNodeKeys) and list(registry) == []
    heard = []
    registry.on_register = lambda name, key: heard.append(name)
    assert "node-1" not in registry  # no folder yet: nothing it could have signed
    folder = ensure_sim_node(nodes_dir, 1)
    assert fingerprint(registry["node-1"]) == fingerprint(node_key(folder))
    assert registry["node-1"] is registry["node-1"] and heard == ["node-1"]  # read once
    assert list(registry) == ["node-1"] and "node-9" not in registry
    # a folder claiming another node's name is not that node's key
    impostor = ensure_sim_node(nodes_dir, 3)
    toml = (impostor / NODE_FILE).read_text().replace('"node-3"', '"node-0"')
    (impostor / NODE_FILE).write_text(toml)
    with pytest.raises(ConfigError, match="declared 'node-3'"):
        registry["node-3"]
    assert "node-0" not in registry


def test_a_lazy_nodes_ledger_verifies_after_cached_rounds(tmp_path):
    bench = NodeBench.create(
        tmp_path, tiny_tabular("lazy-ledger", 3, "test", {"federation.rounds": 2}), lazy=True
    )
    assert not (bench.nodes / "node-1").exists()
    for rnd in (1, 2):
        assert reply_kind(bench.run(bench.request("run-a", rnd, pid=1), pid=1)) == "update"
    assert not (bench.nodes / "node-0").exists()  # only the node that was asked
    folder = bench.nodes / "node-1"
    key = load_verify_key(public_path(folder / "keys" / "signing.ed25519"))
    report = verify_ledger(folder / "ledger", key)
    assert report.ok
    rounds = [e for e in report.entries if e.kind == "round"]
    assert len(rounds) == 2
    for entry in rounds:  # the cached epsilon is the accountant's own answer for that history
        upto = [h for e in report.entries[: entry.seq + 1] if e.spends for h in e.history]
        grouped = tuple(accountant.grouped_history(upto))
        assert entry.epsilon == accountant._epsilon_of.__wrapped__(grouped, entry.delta, "prv")
        assert entry.epsilon_rdp == accountant._epsilon_of.__wrapped__(grouped, entry.delta, "rdp")


def test_two_histories_never_share_an_accountant_result():
    accountant._epsilon_of.cache_clear()
    one = [(1.0, 0.25, 4)]
    near = [(1.0 + 1e-9, 0.25, 4)]  # a hair apart: still its own computation
    steps = [(1.0, 0.25, 5)]
    results = [accountant.epsilon_from_history(h, 1e-5, "rdp") for h in (one, near, steps)]
    assert accountant._epsilon_of.cache_info().currsize == 3
    assert results[0] != results[2]
    for history, got in zip((one, near, steps), results, strict=True):
        uncached = accountant._epsilon_of.__wrapped__(tuple(history), 1e-5, "rdp")
        assert got == uncached
    assert accountant.epsilon_from_history(one, 1e-5, "rdp") == results[0]
    assert accountant._epsilon_of.cache_info().hits == 1
    assert accountant.epsilon_from_history(one, 1e-6, "rdp") != results[0]  # delta is in the key


@pytest.mark.slow  # ~18 s; every simulation runs on it
def test_a_sampled_simulation_runs_on_the_indexed_link_state(tmp_path):
    """Flower's own engine on the node-indexed link state: the sampled nodes get their requests
    (and only they make folders), every reply verifies, and Flower's class is put back."""
    from flwr.server.superlink.linkstate import linkstate_factory
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

    from fedmodel.sim_linkstate import index_applies
    from tests.federation.helpers import run

    assert index_applies()
    cfg = tiny_tabular(
        "indexed", 8, "test", {"strategy.fraction_train": 0.5, "strategy.min_train_nodes": 4}
    )
    run_dir = run(cfg, tmp_path / "run")
    assert linkstate_factory.InMemoryLinkState is InMemoryLinkState
    from server.records import read_metrics

    rounds = [r["clients"] for r in read_metrics(run_dir) if r.get("clients")]
    assert [[r["status"] for r in rows] for rows in rounds] == [["ok"] * 4] * len(rounds)
    made = sorted(p.name for p in (run_dir / "nodes").glob("node-*"))
    assert sorted({r["node"] for rows in rounds for r in rows}) == made
    assert sorted(p.name for p in (run_dir / "registered-keys").iterdir()) == [
        f"{name}.ed25519.pub" for name in made
    ]
