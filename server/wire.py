"""The message contract between the ServerApp and the ClientApp, in one place.

Server -> client (train): one ``signed-request`` record holding a blob the server signed
(:func:`fedmodel.crypto.seal.sign_request`): every config value below, as JSON, and the global
model's safetensors bytes. A node verifies the blob against its pinned server key before it reads
any of it; nothing else in the message is read, except ``sim-nodes-dir`` in simulation (where the
virtual node learns its own folder from the in-process server; deployment nodes have theirs in
``--node-config``).

Client -> server: one of

* ``update`` + ``node``: the trained update as one envelope, signed by the node's registered key
  for this run and round, and sealed to the server when the run seals
  (:func:`update_payload` is the plaintext: tensors *and* metrics, so the relay can change
  neither). ``node`` is only a claim for the records of a reply that fails to open; the envelope
  says who really sent it. The tensors may be coded (:mod:`fedmodel.compression`: the noised
  update quantised or sparsified by the site, after DP-SGD); the server decodes them against
  the round's global model before anything else reads them;
* ``refusal``: the node's policy or budget said no; nothing was trained. It carries the node's
  signed ledger line for the refusal.

Both carry the node's signed ledger entries appended since the head the server named in the
request (``ledger-held``; all of them when it named none), as stored and never re-signed
(:mod:`fedmodel.privacy.ledger_copy`): inside the update's payload (signed, sealed when the run
seals), beside the refusal's own line in a refusal.

Metrics a node sends by default are accounting parameters only (noise multiplier, sample rate,
steps, clipping norm, epsilon, delta, ledger count). Training loss, accuracy and the example count
leave a site only when its policy opts in, noised and charged to its ledger.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedmodel.privacy.ledger_copy import MAX_SUFFIX_BYTES as MAX_LEDGER_SUFFIX

if TYPE_CHECKING:
    import torch

# config keys (server -> client, inside the signed request)
ROUND = "server-round"
NUM_ROUNDS = "num-rounds"
RUN_ID = "run-id"
SCENARIO = "scenario"
PROXIMAL_MU = "proximal-mu"
SERVER_EXCHANGE_KEY = "server-exchange-key"  # hex of the raw X25519 key; nodes check their pin
TENSOR_NAMES = "tensor-names"  # SecAgg+ (legacy lists of arrays): JSON list, state-dict order
SIM_NODES_DIR = "sim-nodes-dir"  # simulation only, outside the signature (see the docstring)
TASK = "task"  # "train" or "evaluate": a request signed for one handler never serves the other
DST_NODE = "dst-node-id"  # the Flower node id a request is signed for: no other node answers it
NOT_AFTER = "not-after"  # unix seconds: a request is not answered after this (no old replays)
PARTITIONS = "partitions"  # JSON {node name: [partition, of]}: who trains which packaged rows
EXPECTED_HEAD = "ledger-head"  # the head the server last recorded for the node, in this run
UNVERIFIED_RUN = "unverified"  # run id of a refusal of a request a node could not verify
LEDGER_HELD = "ledger-held"  # the head of the node's ledger copy the server holds in this run

# record names (server -> client)
CONFIG = "config"
SIGNED_REQUEST = "signed-request"
BLOB = "blob"

# record names (client -> server)
ARRAYS = "arrays"
METRICS = "metrics"
NODE = "node"
REFUSAL = "refusal"
UPDATE = "update"
ENVELOPE = "envelope"
LEDGER_ENTRY = "ledger-entry"  # in a refusal: the node's signed ledger line for it
LEDGER_SUFFIX = "ledger-suffix"  # the node's signed ledger entries since the held head
UNIT_WEIGHT = "unit-weight"  # what FedAvg weighs by: 1 for every accepted site (set by the server)
MAX_REPLY_META = 64 * 1024  # bytes of metrics + node record inside an update payload

# the tensor that carries metrics and node record inside a sealed payload; a dunder name cannot
# collide with a module's parameter names
REPLY_TENSOR = "__fedmodel_reply__"
LEDGER_TENSOR = "__fedmodel_ledger__"  # the ledger suffix inside a payload (same reason)
COMPRESSION = "compression"  # node record: the update's coding, as the server decoded it

METRIC_KEYS = (
    "num-examples", "partition-id", "train-loss", "train-accuracy", "epsilon", "epsilon-rdp",
    "delta", "noise-multiplier", "sample-rate", "steps", "max-grad-norm", "ledger-count",
    "eval-count", "eval-correct", "eval-loss-sum",
)  # fmt: skip
# what a node may report about itself; anything else in a reply's metrics is dropped unread


def refusal_record(
    node: str,
    reason: str,
    projected_epsilon: float,
    ledger_hash: str,
    ledger_count: int,
    ledger_entry: str,
    ledger_suffix: bytes = b"",
) -> RecordDict:
    """A refusal carries the node's signed ledger entry for it, so a run that authenticates its
    nodes (sealed updates) can tell a node's refusal from one a relay made up, and the entries
    before it the server does not hold yet (``ledger_suffix``; none for an unverified request)."""
    values: dict[str, Any] = {
        "node": node,
        "reason": reason,
        "projected-epsilon": float(projected_epsilon),
        "ledger-hash": ledger_hash,
        "ledger-count": int(ledger_count),
        LEDGER_ENTRY: ledger_entry,
    }
    if ledger_suffix:
        values[LEDGER_SUFFIX] = ledger_suffix
    return RecordDict({REFUSAL: ConfigRecord(values)})


def update_record(
    arrays: ArrayRecord, metrics: Mapping[str, int | float], node: Mapping[str, str]
) -> RecordDict:
    """An opened update, as strategies aggregate it: one ArrayRecord and one MetricRecord."""
    return RecordDict(
        {ARRAYS: arrays, METRICS: MetricRecord(dict(metrics)), NODE: ConfigRecord(dict(node))}
    )


def envelope_record(envelope: bytes, node_name: str) -> RecordDict:
    """A node's reply: its envelope (sealed or signed) as ConfigRecord bytes, which go to the
    wire as they are, one object instead of one per tensor."""
    return RecordDict(
        {UPDATE: ConfigRecord({ENVELOPE: envelope}), NODE: ConfigRecord({"name": node_name})}
    )


def request_record(blob: bytes, sim_nodes_dir: str | None = None) -> RecordDict:
    """A training request: the signed blob (and, in simulation, where the virtual nodes live)."""
    values: dict[str, Any] = {BLOB: blob}
    if sim_nodes_dir:
        values[SIM_NODES_DIR] = sim_nodes_dir
    return RecordDict({SIGNED_REQUEST: ConfigRecord(values)})


def update_payload(
    state_dict: Mapping[str, torch.Tensor],
    metrics: Mapping[str, int | float],
    node: Mapping[str, str],
    ledger: bytes = b"",
) -> bytes:
    """The bytes a node seals: its tensors plus uint8 tensors holding metrics and node record,
    and its ledger suffix (``ledger``, :class:`fedmodel.privacy.ledger_copy.LedgerSuffix`).

    One safetensors buffer, written by :func:`fedmodel.crypto.seal.state_dict_to_bytes`, so the
    update is serialised once and nothing in it can run code when loaded.
    """
    import torch

    from fedmodel.crypto.seal import state_dict_to_bytes

    meta = json.dumps({METRICS: dict(metrics), NODE: dict(node)}, sort_keys=True).encode()
    extra = {REPLY_TENSOR: torch.frombuffer(bytearray(meta), dtype=torch.uint8)}
    if ledger:
        extra[LEDGER_TENSOR] = torch.frombuffer(bytearray(ledger), dtype=torch.uint8)
    return state_dict_to_bytes({**state_dict, **extra})


def update_from_payload(
    payload: bytes, reference: Mapping[str, torch.Tensor] | None = None
) -> RecordDict:
    """Inverse of :func:`update_payload`: the plaintext reply the wrapped strategy expects.

    A compressed update (:mod:`fedmodel.compression`) is decoded against ``reference``, the
    global model this round's request carried, and the node record then says which coding
    arrived (:data:`COMPRESSION`), as read from the payload itself, never as the site claims.
    """
    from fedmodel.crypto.seal import SealError, state_dict_from_bytes

    tensors = state_dict_from_bytes(payload)
    coding = _decompressed(tensors, reference)
    ledger = tensors.pop(LEDGER_TENSOR, None)
    if ledger is not None and (ledger.dim() != 1 or ledger.numel() > MAX_LEDGER_SUFFIX):
        raise SealError("malformed", "update payload's ledger entries are not a bounded record")
    reply = tensors.pop(REPLY_TENSOR, None)
    if reply is None or reply.dim() != 1 or reply.numel() > MAX_REPLY_META:
        raise SealError("malformed", "update payload lacks a bounded metrics and node record")
    try:
        meta = json.loads(reply.numpy().tobytes().decode())
        metrics = {
            str(k): v
            for k, v in dict(meta[METRICS]).items()
            if k in METRIC_KEYS
            and isinstance(v, int | float)
            and not isinstance(v, bool)
            and math.isfinite(v)
        }
        node = {str(k): str(v) for k, v in meta[NODE].items()}
    except (TypeError, KeyError, ValueError, UnicodeDecodeError, AttributeError):
        raise SealError("malformed", "update payload lacks its metrics and node record") from None
    node[COMPRESSION] = coding
    record = update_record(ArrayRecord(tensors), metrics, node)
    if ledger is not None:
        record[LEDGER_SUFFIX] = ConfigRecord({LEDGER_SUFFIX: ledger.numpy().tobytes()})
    return record


def _decompressed(
    tensors: dict[str, torch.Tensor], reference: Mapping[str, torch.Tensor] | None
) -> str:
    """Decode a compressed update in place (the other tensors left as they are); return the
    coding's name (``none`` for plain weights)."""
    from fedmodel.compression import CompressionError, decompress_update, is_compressed
    from fedmodel.crypto.seal import SealError

    if not is_compressed(tensors):
        return "none"
    if reference is None:
        raise SealError("malformed", "compressed update, but no global model to decode it against")
    own = {k: tensors.pop(k) for k in list(tensors) if k not in (REPLY_TENSOR, LEDGER_TENSOR)}
    try:
        decoded, cfg = decompress_update(own, reference)
    except CompressionError as err:
        raise SealError("malformed", str(err)) from None
    tensors.update(decoded)
    return cfg.describe()


def take_ledger_suffix(content: RecordDict) -> bytes | None:
    """Remove and return the ledger suffix an opened update carries: the strategies that
    aggregate the reply never see it."""
    record = content.config_records.get(LEDGER_SUFFIX)
    if record is None:
        return None
    del content[LEDGER_SUFFIX]
    value = record.get(LEDGER_SUFFIX)
    return value if isinstance(value, bytes) else None


def client_row(content: RecordDict) -> dict[str, Any]:
    """Flatten one client reply into the per-client row of ``metrics.jsonl``."""
    if REFUSAL in content:
        r = content[REFUSAL]
        return {
            "node": str(r["node"]),
            "status": "refused",
            "reason": str(r["reason"]),
            "projected_epsilon": _number_or_none(r["projected-epsilon"]),
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
    row["released"] = sorted(str(node.get("releases", "model-update")).split(","))
    row["compression"] = str(node.get(COMPRESSION, "none"))
    return row


def _number_or_none(value: Any) -> float | None:
    """A refusal with no projection carries NaN on the wire; the records say null."""
    number = float(value)
    return None if math.isnan(number) else number


def short_reason(text: str, limit: int = 300) -> str:
    """One line for the records: a simulated node's crash arrives as a whole Ray traceback,
    whose last line says what happened."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    return last if len(last) <= limit else last[: limit - 1] + "…"


def weigh_uniformly(replies: Iterable[Message]) -> None:
    """Every accepted site counts once: no site can claim a larger weight, and example counts
    (private at a site) need not leave it. Central DP's noise is calibrated for this mean too.
    The aggregated metrics record is the weight alone, so replies whose reports differ (a site
    that keeps its size private, an unbounded epsilon left out) still aggregate."""
    for msg in replies:  # the row already holds what the site reported; FedAvg needs one key
        msg.content[METRICS] = MetricRecord({UNIT_WEIGHT: 1})


def claimed_node(content: RecordDict, src_node_id: int) -> str:
    """Who a reply says it is, for the row of a reply that could not be opened or read."""
    for name, key in ((NODE, "name"), (REFUSAL, "node")):
        if name in content and key in content[name]:
            return str(content[name][key])
    return f"flower-{src_node_id}"


# --- flat form: legacy FitRes metrics (SecAgg+) carry only scalars -------------------------------

_FLAT_RECORDS = (METRICS, NODE, REFUSAL)


def flatten_reply(records: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``{"metrics.num-examples": 120, "node.name": "node-0", ...}``: the records minus arrays.

    ``records`` is a reply's RecordDict or a plain ``{record name: {key: value}}`` mapping.
    """
    return {
        f"{name}.{key}": value
        for name in _FLAT_RECORDS
        if name in records
        for key, value in records[name].items()
    }


def unflatten_reply(flat: Mapping[str, Any]) -> RecordDict:
    """Inverse of :func:`flatten_reply`, so :func:`client_row` reads both transports alike."""
    groups: dict[str, dict[str, Any]] = {}
    for flat_key, value in flat.items():
        name, _, key = flat_key.partition(".")
        if name in _FLAT_RECORDS and key:
            groups.setdefault(name, {})[key] = value
    records: dict[str, Any] = {
        name: MetricRecord(values) if name == METRICS else ConfigRecord(values)
        for name, values in groups.items()
    }
    return RecordDict(records)
