"""The message contract between the ServerApp and the ClientApp, in one place.

Server -> client (train): ``arrays`` (global model) and ``config`` with the keys below.
Client -> server: either ``arrays`` + ``metrics`` + ``node`` (a trained update), or only
``refusal`` (the node's policy or budget said no; nothing was trained).
"""

from __future__ import annotations

from typing import Any

from flwr.app import ConfigRecord, MetricRecord, RecordDict

# config keys (server -> client)
ROUND = "server-round"
NUM_ROUNDS = "num-rounds"
RUN_ID = "run-id"
SCENARIO = "scenario"
SIM_NODES_DIR = "sim-nodes-dir"
PROXIMAL_MU = "proximal-mu"

# record names (client -> server)
ARRAYS = "arrays"
METRICS = "metrics"
NODE = "node"
REFUSAL = "refusal"

METRIC_KEYS = (
    "num-examples", "partition-id", "train-loss", "train-accuracy", "epsilon", "epsilon-rdp",
    "delta", "noise-multiplier", "sample-rate", "steps", "max-grad-norm", "ledger-count",
)  # fmt: skip


def refusal_record(
    node: str, reason: str, projected_epsilon: float, ledger_hash: str, ledger_count: int
) -> RecordDict:
    return RecordDict(
        {
            REFUSAL: ConfigRecord(
                {
                    "node": node,
                    "reason": reason,
                    "projected-epsilon": float(projected_epsilon),
                    "ledger-hash": ledger_hash,
                    "ledger-count": int(ledger_count),
                }
            )
        }
    )


def client_row(content: RecordDict) -> dict[str, Any]:
    """Flatten one client reply into the per-client row of ``metrics.jsonl``."""
    if REFUSAL in content:
        r = content[REFUSAL]
        return {
            "node": str(r["node"]),
            "status": "refused",
            "reason": str(r["reason"]),
            "projected_epsilon": float(r["projected-epsilon"]),
            "ledger_head": {"hash": str(r["ledger-hash"]), "count": int(r["ledger-count"])},
        }
    m: MetricRecord = content[METRICS]
    node: ConfigRecord = content[NODE]
    row: dict[str, Any] = {k.replace("-", "_"): m[k] for k in METRIC_KEYS if k in m}
    row["node"] = str(node["name"])
    row["status"] = "ok"
    row["reason"] = None
    row["partition_id"] = int(row.get("partition_id", -1))
    row["ledger_head"] = {"hash": str(node["ledger-hash"]), "count": int(m["ledger-count"])}
    return row
