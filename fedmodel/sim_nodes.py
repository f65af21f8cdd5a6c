"""Virtual nodes for simulation: one folder per node, as if each were a site's own disk.

Each gets a ``node.toml`` (its cap from the scenario's ``budget``/``client_budgets``), its own
Ed25519 signing key and an empty ledger folder. Existing folders are kept: a resumed run's nodes
continue their ledgers instead of starting fresh. Once the ServerApp has its keys, it pins them
in every node folder (``server.pin.json``, :func:`pin_server`), as a site operator would by hand.
"""

from __future__ import annotations

from pathlib import Path

from fedmodel.config import ScenarioConfig
from fedmodel.crypto.keys import generate_signing_key, save_signing_key
from fedmodel.crypto.pin import write_pin
from fedmodel.io import atomic_write_text
from fedmodel.node_config import NODE_FILE, NodeConfig, NodeData, SitePolicy
from fedmodel.scenarios import _dump_toml


def prepare_sim_nodes(nodes_dir: Path, scenario: ScenarioConfig) -> list[Path]:
    folders = []
    n = scenario.federation.num_clients
    for pid in range(n):
        folder = Path(nodes_dir) / f"node-{pid}"
        node_file = folder / NODE_FILE
        if not node_file.is_file():
            cfg = NodeConfig(
                name=scenario.sites[pid].name if scenario.sites else f"node-{pid}",
                budget=scenario.budget_for(pid),
                data=_node_data(scenario, pid),
                # the researcher's virtual sites take part in the evaluation they simulate
                policy=SitePolicy(
                    share_eval_metrics=scenario.evaluation.federated,
                    allowed_model_factories=_approved_factory(scenario),
                ),
            )
            atomic_write_text(node_file, _dump_toml(cfg.model_dump(mode="json", exclude_none=True)))
        signing_key = folder / "keys" / "signing.ed25519"
        if not signing_key.is_file():
            save_signing_key(generate_signing_key(), signing_key)
        (folder / "ledger").mkdir(parents=True, exist_ok=True)
        folders.append(folder)
    return folders


def _node_data(scenario: ScenarioConfig, pid: int) -> NodeData:
    """A listed site's own files, else the packaged partition the coordinator assigns."""
    if not scenario.sites:
        return NodeData(partition_id=pid, num_partitions=scenario.federation.num_clients)
    site = scenario.sites[pid].model_dump(exclude={"name"})
    site["path"] = str(Path(site["path"]).absolute())
    if site.get("test_path") is not None:
        site["test_path"] = str(Path(site["test_path"]).absolute())
    return NodeData.model_validate(site)


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
    """Make every virtual node trust this run's server keys (rewritten on resume: same keys)."""
    return [
        write_pin(node_file.parent, exchange_fingerprint, Path(verify_key_path).resolve())
        for node_file in sorted(Path(nodes_dir).glob(f"*/{NODE_FILE}"))
    ]
