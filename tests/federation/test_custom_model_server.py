"""The server builds the same custom factory as the sites, to aggregate and evaluate; with the
scenario's ``factory_sha256`` it checks the sources first, as a site does with its own digest."""

from __future__ import annotations

import json
import os

import pytest
from torch import nn

from fedmodel.data import load_dataset
from fedmodel.models import ModelError
from fedmodel.models.custom import factory_digest
from fedmodel.node_config import load_node_config
from fedmodel.scenarios import apply_overrides
from fedmodel.sim_nodes import prepare_sim_nodes
from server.federation import _initial_model
from server.records import read_metrics
from tests.federation.helpers import run, small_tabular
from tests.models.test_custom_factory import write_factory


def custom_scenario(tmp_path, monkeypatch, **model):
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    module, marker = write_factory(tmp_path / "pkgs")
    spec = f"{module}:make"
    overrides = {"model.name": "custom", "model.factory": spec, **model}
    return apply_overrides(small_tabular("fedavg"), overrides, "t"), spec, marker


def test_the_server_model_is_the_factory_checked_by_the_scenario_digest(tmp_path, monkeypatch):
    scenario, spec, marker = custom_scenario(
        tmp_path, monkeypatch, **{"model.factory_sha256": "a" * 64}
    )
    splits = load_dataset(scenario.data)
    with pytest.raises(ModelError, match="source changed"):
        _initial_model(scenario, splits)
    assert not marker.exists()
    scenario = apply_overrides(scenario, {"model.factory_sha256": factory_digest(spec)}, "t")
    model = _initial_model(scenario, splits)
    assert isinstance(model[1], nn.Linear) and model[1].in_features == splits.input_shape[0]
    assert marker.exists()


def test_virtual_sites_approve_the_scenario_factory_as_it_is_on_disk(tmp_path, monkeypatch):
    scenario, spec, marker = custom_scenario(tmp_path, monkeypatch)
    folders = prepare_sim_nodes(tmp_path / "nodes", scenario)
    for folder in folders:
        policy = load_node_config(folder / "node.toml").policy
        assert policy.allowed_model_factories == {spec: factory_digest(spec)}
    assert not marker.exists()


@pytest.mark.slow  # ~16 s run; tests/sealing/test_custom_model_node.py trains it
def test_a_simulated_run_trains_the_custom_factory(tmp_path, monkeypatch):
    """Real Flower and Opacus: the Ray workers find the package on PYTHONPATH, as a site's
    installed package; every site trains, the server aggregates and evaluates the factory."""
    scenario, _, marker = custom_scenario(tmp_path, monkeypatch)
    paths = [str(tmp_path / "pkgs"), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    run_dir = run(scenario, tmp_path / "run")
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished"
    last = read_metrics(run_dir)[-1]
    assert last["round"] == 1 and 0 <= last["server"]["accuracy"] <= 1
    clients = last["clients"]
    assert len(clients) == 2 and all(row["status"] == "ok" for row in clients), clients
    assert marker.exists()
