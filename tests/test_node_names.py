"""One node-name rule where names enter: node.toml, server.toml, keys, the virtual nodes."""

from __future__ import annotations

import pytest

from fedmodel.config import ConfigError
from fedmodel.crypto.keys import KeyFileError, node_key_paths
from fedmodel.node_config import NodeConfig, load_node_config
from fedmodel.scenarios import tiny_tabular
from fedmodel.sim_nodes import prepare_sim_nodes
from server.deploy.config import AllowedNode

BAD = ["", ".", "..", "a/b", "../x", "/etc", "-lead", ".hidden", "$x^2$", "a b", "é", "n" * 65]
GOOD = ["node-0", "hospital_a", "site.1", "N" * 64]


@pytest.mark.parametrize("name", BAD)
def test_a_bad_name_is_refused_wherever_it_enters(tmp_path, name):
    node_file = tmp_path / "node.toml"
    node_file.write_text(f'name = "{name}"\n')
    with pytest.raises(ConfigError, match="name"):
        load_node_config(node_file)
    with pytest.raises(ValueError):
        AllowedNode(name=name)
    with pytest.raises(KeyFileError, match="node name"):
        node_key_paths(name, tmp_path)


@pytest.mark.parametrize("name", GOOD)
def test_a_good_name_is_accepted_everywhere(tmp_path, name):
    assert NodeConfig(name=name).name == AllowedNode(name=name).name == name
    assert node_key_paths(name, tmp_path)[0].parent == tmp_path


def test_the_rule_is_one_rule():
    from fedmodel.nodenames import NODE_NAME_PATTERN, is_node_name

    for field in (NodeConfig.model_fields["name"], AllowedNode.model_fields["name"]):
        assert any(getattr(m, "pattern", None) == NODE_NAME_PATTERN for m in field.metadata)
    assert [is_node_name(n) for n in BAD] == [False] * len(BAD)
    assert [is_node_name(n) for n in GOOD] == [True] * len(GOOD)
    assert not is_node_name(None) and not is_node_name(3)


def test_virtual_nodes_pass_the_rule(tmp_path):
    folders = prepare_sim_nodes(tmp_path, tiny_tabular("names", 3, "test"))
    assert [load_node_config(f / "node.toml").name for f in folders] == [
        "node-0",
        "node-1",
        "node-2",
    ]
