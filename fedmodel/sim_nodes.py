"""Virtual nodes for simulation: one folder per node, as if each were a site's own disk.

Each gets a ``node.toml`` (its cap from the scenario's ``budget``/``client_budgets``), its own
Ed25519 signing key and an empty ledger folder. Existing folders are kept: a resumed run's nodes
continue their ledgers instead of starting fresh. Once the ServerApp has its keys, it pins them
in every node folder (``server.pin.json``, :func:`pin_server`), as a site operator would by hand.

Folders are made lazily: :func:`declare_sim_nodes` writes only the plan they are made from
(``sim-nodes.json``, the researcher's scenario as it is now), and a virtual node makes its own
folder, key included, on its first request (:func:`ensure_sim_node`). Ten thousand declared
nodes of which a thousand ever train cost a thousand folders, not ten thousand, and the run
starts at once. :func:`prepare_sim_nodes` still makes every folder up front for callers that
want to look into them before the run.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from fedmodel.config import ConfigError, ScenarioConfig
from fedmodel.crypto.keys import generate_signing_key, save_signing_key
from fedmodel.crypto.pin import PIN_FILE, write_pin
from fedmodel.io import atomic_write_json, atomic_write_text
from fedmodel.node_config import NODE_FILE, NodeConfig, NodeData, SitePolicy
from fedmodel.scenarios import _dump_toml

PLAN_FILE = "sim-nodes.json"  # <nodes_dir>/sim-nodes.json: what each folder is made from


def declare_sim_nodes(nodes_dir: Path, scenario: ScenarioConfig) -> Path:
    """Write the plan the virtual nodes' folders are made from; no folder is made yet.

    What depends on this moment is fixed here: the sites' file paths (relative to where the
    researcher runs the command) and the digest of a custom model factory as it is on disk now.
    """
    plan = {
        "scenario": _absolute_sites(scenario).model_dump(mode="json"),
        "approved_factories": _approved_factory(scenario),
    }
    return atomic_write_json(Path(nodes_dir) / PLAN_FILE, plan)


def prepare_sim_nodes(nodes_dir: Path, scenario: ScenarioConfig) -> list[Path]:
    """Declare the nodes and make every folder now (tests and tools that look inside them)."""
    declare_sim_nodes(nodes_dir, scenario)
    return [ensure_sim_node(nodes_dir, pid) for pid in range(scenario.federation.num_clients)]


def sim_node_folder(nodes_dir: Path, partition_id: int) -> Path:
    return Path(nodes_dir) / f"node-{int(partition_id)}"


def ensure_sim_node(nodes_dir: Path, partition_id: int) -> Path:
    """The folder of virtual node ``partition_id``, made from the plan if it does not exist.

    The folder is built beside its final place and renamed into it, so a reader sees a whole
    node or none; two processes racing to make the same node keep the first one's (its key is
    the node's key from then on). A folder of an older run (no plan) is completed as before.
    """
    folder = sim_node_folder(nodes_dir, partition_id)
    if (folder / NODE_FILE).is_file():
        _complete(folder)
        return folder
    plan = _plan(Path(nodes_dir) / PLAN_FILE)
    scenario: ScenarioConfig = plan["scenario"]
    if not 0 <= partition_id < scenario.federation.num_clients:
        raise ConfigError(
            f"{nodes_dir}: node {partition_id} is not one of the "
            f"{scenario.federation.num_clients} declared virtual nodes"
        )
    building = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=nodes_dir))
    try:
        cfg = _node_config(scenario, partition_id, plan["approved_factories"])
        atomic_write_text(
            building / NODE_FILE, _dump_toml(cfg.model_dump(mode="json", exclude_none=True))
        )
        _complete(building)
        pin = Path(nodes_dir) / PIN_FILE
        if pin.is_file():  # the server pinned already: this node trusts the same server
            shutil.copyfile(pin, building / PIN_FILE)
        os.rename(building, folder)
    except OSError as err:
        shutil.rmtree(building, ignore_errors=True)
        if err.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not (folder / NODE_FILE).is_file():
            raise
    return folder


def _complete(folder: Path) -> None:
    """A signing key and a ledger folder where the node has none yet."""
    signing_key = folder / "keys" / "signing.ed25519"
    if not signing_key.is_file():
        save_signing_key(generate_signing_key(), signing_key)
    (folder / "ledger").mkdir(parents=True, exist_ok=True)


def _node_config(scenario: ScenarioConfig, pid: int, approved: dict[str, str]) -> NodeConfig:
    return NodeConfig(
        name=scenario.sites[pid].name if scenario.sites else f"node-{pid}",
        budget=scenario.budget_for(pid),
        data=_node_data(scenario, pid),
        # the researcher's virtual sites take part in the evaluation they simulate
        policy=SitePolicy(
            share_eval_metrics=scenario.evaluation.federated,
            allowed_model_factories=approved,
        ),
    )


def declared_names(nodes_dir: Path) -> dict[str, Path] | None:
    """Every declared node's name and folder, from the plan; ``None`` without a plan."""
    path = Path(nodes_dir) / PLAN_FILE
    if not path.is_file():
        return None
    scenario: ScenarioConfig = _plan(path)["scenario"]
    n = scenario.federation.num_clients
    names = [s.name for s in scenario.sites] if scenario.sites else [f"node-{p}" for p in range(n)]
    return {name: sim_node_folder(nodes_dir, pid) for pid, name in enumerate(names)}


def _plan(path: Path) -> dict[str, Any]:
    """The plan, parsed once per process and file version (every node of a run shares it)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no virtual-node plan (run fedmodel simulate)") from None
    return _parsed_plan(str(path), stat.st_mtime_ns, stat.st_size, stat.st_ino)


@lru_cache(maxsize=8)
def _parsed_plan(path: str, _mtime_ns: int, _size: int, _inode: int) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        scenario = ScenarioConfig.model_validate(data["scenario"])
        approved = {str(k): str(v) for k, v in dict(data["approved_factories"]).items()}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{path}: malformed virtual-node plan ({err})") from None
    return {"scenario": scenario, "approved_factories": approved}


def _absolute_sites(scenario: ScenarioConfig) -> ScenarioConfig:
    """Sites' files as absolute paths: a node made later may run in another directory."""
    if not scenario.sites:
        return scenario
    sites = []
    for site in scenario.sites:
        update = {"path": Path(site.path).absolute()}
        if site.test_path is not None:
            update["test_path"] = Path(site.test_path).absolute()
        sites.append(site.model_copy(update=update))
    return scenario.model_copy(update={"sites": sites})


def _node_data(scenario: ScenarioConfig, pid: int) -> NodeData:
    """A listed site's own files (made absolute when declared), else the packaged partition
    the coordinator assigns."""
    if not scenario.sites:
        return NodeData(partition_id=pid, num_partitions=scenario.federation.num_clients)
    return NodeData.model_validate(scenario.sites[pid].model_dump(exclude={"name"}))


def _approved_factory(scenario: ScenarioConfig) -> dict[str, str]:
    """The researcher's virtual sites approve the scenario's custom factory as it is on this disk
    now (or as ``factory_sha256`` names it): the approval a real site gives with ``fedmodel model
    hash``. A file changed later in the run is refused like at any site."""
    model = scenario.model
    if model.name != "custom" or model.factory is None:
        return {}
    from fedmodel.models.custom import factory_digest

    return {model.factory: model.factory_sha256 or factory_digest(model.factory)}


def pin_server(nodes_dir: Path, exchange_fingerprint: str, verify_key_path: Path) -> list[Path]:
    """Make every virtual node trust this run's server keys (rewritten on resume: same keys).

    The plan's folder gets the pin first, so a node made from then on copies it; folders made
    earlier (a resumed run) get it rewritten."""
    write_pin(Path(nodes_dir), exchange_fingerprint, Path(verify_key_path).resolve())
    return [
        write_pin(node_file.parent, exchange_fingerprint, Path(verify_key_path).resolve())
        for node_file in sorted(Path(nodes_dir).glob(f"*/{NODE_FILE}"))
    ]
