"""Packaged partitions come from the coordinator's signed table: two sites cannot both train on
one partition by writing the same number in their node.toml, and a site the table leaves out,
or whose node.toml says otherwise, refuses with nothing spent."""

from __future__ import annotations

import tomllib

import pytest

from fedmodel.config import ConfigError
from fedmodel.data.local import client_train_set
from fedmodel.partitions import dump_assignment
from fedmodel.scenarios import _dump_toml, tiny_tabular
from server import wire
from server.deploy.config import load_server_config
from tests.nodebench import NodeBench, reply_kind


@pytest.fixture
def bench(tmp_path) -> NodeBench:
    scenario = tiny_tabular("assigned", 3, "t", {"federation.rounds": 1})
    return NodeBench.create(tmp_path, scenario)


def _forget_own_partition(bench: NodeBench, pid: int = 0) -> None:
    """A deployed site that lets the coordinator assign its packaged rows."""
    path = bench.node_file(pid)
    data = tomllib.loads(path.read_text())
    data.pop("data", None)
    path.write_text(_dump_toml(data))


def _table(**names: tuple[int, int]) -> dict[str, str]:
    return {wire.PARTITIONS: dump_assignment(dict(names))}


def test_a_site_trains_on_the_partition_the_coordinator_assigned(bench):
    _forget_own_partition(bench)
    assignment = {"node-0": (2, 3), "node-1": (0, 3), "node-2": (1, 3)}
    reply = bench.run(bench.request("run-a", 1, **_table(**assignment)))
    assert reply_kind(reply) == "update"
    (spend,) = bench.spends()
    assert spend.dataset_size == len(client_train_set(bench.scenario, 2, 3))


def test_a_node_toml_that_contradicts_the_table_is_refused(bench):
    """node-0 says partition 0 (another site's): the coordinator's table wins, the site
    refuses rather than train on rows it was not assigned."""
    table = _table(**{"node-0": (1, 3), "node-1": (0, 3)})
    reply = bench.run(bench.request("run-b", 1, **table))
    assert reply_kind(reply) == "refusal"
    assert "assigned partition 1 of 3" in reply[wire.REFUSAL]["reason"]
    assert bench.spends() == []


def test_a_site_the_table_leaves_out_refuses(bench):
    _forget_own_partition(bench)
    reply = bench.run(bench.request("run-c", 1, **_table(**{"node-1": (0, 3)})))
    assert "assigns this site no partition" in reply[wire.REFUSAL]["reason"]
    assert bench.spends() == []


def test_server_toml_cannot_assign_one_partition_twice(tmp_path):
    text = (
        'host = "127.0.0.1"\nport = 19400\ninsecure = true\n'
        '[[nodes]]\nname = "a"\npartition_id = 0\n'
        '[[nodes]]\nname = "b"\npartition_id = 0\n'
    )
    (tmp_path / "server.toml").write_text(text)
    with pytest.raises(ConfigError) as err:
        load_server_config(tmp_path / "server.toml")
    line = str(err.value)
    assert "\n" not in line and "both assigned partition 0" in line, line
