"""A bench for node-side tests: virtual node folders, a real server key set, signed requests.

Requests are built by the server's own code (``SignedTraffic``: the JSON it signs and
``sign_request``), wrapped in the Flower record a node receives, and handed to the real
ClientApp round (``run_train_round``). Nothing of the part under test is replaced.
"""

from __future__ import annotations

import json
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import Context, RecordDict

from clients.train_round import run_train_round
from fedmodel.config import ScenarioConfig
from fedmodel.crypto.keys import load_signing_key
from fedmodel.crypto.seal import sign_request, state_dict_to_bytes
from fedmodel.models import build_model
from fedmodel.node_config import NODE_FILE, load_node_config
from fedmodel.privacy.ledger import Ledger, LedgerEntry
from fedmodel.scenarios import _dump_toml
from fedmodel.sim_nodes import declare_sim_nodes, pin_server, prepare_sim_nodes
from server import wire
from server.sealing import ServerKeys, SignedTraffic, ensure_server_keys


@dataclass
class NodeBench:
    scenario: ScenarioConfig
    nodes: Path
    keys: ServerKeys
    input_shape: tuple[int, ...]
    num_classes: int

    @classmethod
    def create(
        cls, tmp: Path, scenario: ScenarioConfig, input_shape=(30,), num_classes=2, lazy=False
    ) -> NodeBench:
        """``lazy``: the nodes are only declared; each makes its folder on its first request."""
        nodes = tmp / "nodes"
        (declare_sim_nodes if lazy else prepare_sim_nodes)(nodes, scenario)
        keys = ensure_server_keys(tmp / "server-keys")
        pin_server(nodes, keys.exchange_fingerprint, keys.verify_key_path)
        return cls(scenario, nodes, keys, input_shape, num_classes)

    def node_file(self, pid: int = 0) -> Path:
        return self.nodes / f"node-{pid}" / NODE_FILE

    def set_node(self, pid: int, **values: Any) -> None:
        """Change the node's own ``node.toml`` as its operator would: dotted keys to values."""
        path = self.node_file(pid)
        data = tomllib.loads(path.read_text())
        for dotted, value in values.items():
            *tables, key = dotted.split(".")
            target = data
            for table in tables:
                target = target.setdefault(table, {})
            target[key] = value
        path.write_text(_dump_toml(data))

    def model_payload(self, scenario: ScenarioConfig | None = None) -> bytes:
        cfg = scenario or self.scenario
        return state_dict_to_bytes(
            build_model(cfg.model, self.input_shape, self.num_classes).state_dict()
        )

    def signed_config(
        self,
        run_id: str,
        rnd: int,
        scenario: ScenarioConfig | None = None,
        task: str = "train",
        pid: int = 0,
        **extra: Any,
    ) -> dict[str, Any]:
        cfg = scenario or self.scenario
        traffic = SignedTraffic(self.keys, {}, run_id, sealed=cfg.security.sealed_updates)
        config = {
            wire.RUN_ID: run_id,
            wire.NUM_ROUNDS: cfg.federation.rounds,
            wire.SCENARIO: cfg.without_budgets().model_dump_json(),
            **extra,
        }
        not_after = int(time.time()) + 3600
        return traffic.node_config(config, rnd, task, 100 + pid, not_after)

    def request(
        self,
        run_id: str,
        rnd: int,
        scenario: ScenarioConfig | None = None,
        task: str = "train",
        pid: int = 0,
        **extra: Any,
    ) -> RecordDict:
        """What the real server sends node ``pid``: a blob signed over the whole config (its
        destination and expiry included) and the model."""
        config = self.signed_config(run_id, rnd, scenario, task, pid, **extra)
        blob = sign_request(self.model_payload(scenario), self.keys.signing, config)
        return wire.request_record(blob, str(self.nodes))

    def run(self, content: RecordDict, pid: int = 0, state: RecordDict | None = None) -> RecordDict:
        return run_train_round(content, self.context(pid, state))

    def context(self, pid: int = 0, state: RecordDict | None = None) -> Context:
        return Context(
            run_id=1,
            node_id=100 + pid,
            node_config={
                "partition-id": pid,
                "num-partitions": self.scenario.federation.num_clients,
            },
            state=state if state is not None else RecordDict(),
            run_config={},
        )

    def ledger_entries(self, pid: int = 0) -> list[LedgerEntry]:
        node = load_node_config(self.node_file(pid))
        return Ledger(node.ledger_dir, load_signing_key(node.signing_key)).entries()

    def spends(self, pid: int = 0) -> list[LedgerEntry]:
        return [e for e in self.ledger_entries(pid) if e.spends]


def blob_of(content: RecordDict) -> bytes:
    return content[wire.SIGNED_REQUEST][wire.BLOB]


def with_blob(content: RecordDict, blob: bytes) -> RecordDict:
    nodes = content[wire.SIGNED_REQUEST].get(wire.SIM_NODES_DIR)
    return wire.request_record(blob, str(nodes) if nodes else None)


def relay_edit(blob: bytes, edit) -> bytes:
    """What a relay can do to a signed request: rewrite the config JSON inside the header,
    fixing up the length field, and keep the signature it cannot recompute."""
    fixed = 4 + 1 + 4 + 32 + 8 + 4
    config_len = int.from_bytes(blob[fixed - 4 : fixed], "big")
    config = json.loads(blob[fixed : fixed + config_len])
    edited = json.dumps(edit(config), sort_keys=True, separators=(",", ":")).encode()
    head = blob[: fixed - 4] + len(edited).to_bytes(4, "big")
    return head + edited + blob[fixed + config_len :]


def reply_kind(reply: RecordDict) -> str:
    if wire.REFUSAL in reply:
        return "refusal"
    if wire.UPDATE in reply:
        return "update"
    return "other"


def node_process(blob: bytes, nodes: str, pid: int, num_partitions: int, barrier, out) -> None:
    """One node process answering one request, started with ``multiprocessing`` (spawn): a
    second ClientApp on the same node, as when two runs reach one site at the same time. Waits
    on ``barrier`` after its imports so the two requests really race."""
    from clients.train_round import run_train_round as answer

    context = Context(
        run_id=1,
        node_id=100 + pid,
        node_config={"partition-id": pid, "num-partitions": num_partitions},
        state=RecordDict(),
        run_config={},
    )
    barrier.wait(timeout=120)
    reply = answer(wire.request_record(blob, nodes), context)
    if wire.UPDATE in reply:
        out.put(("update", reply[wire.UPDATE][wire.ENVELOPE]))
    else:
        out.put(("refusal", str(reply[wire.REFUSAL]["reason"])))
