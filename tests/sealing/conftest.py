"""Real keys, real envelopes, real Flower messages: the pieces the screening tests combine."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from fedmodel.crypto.seal import load_server_public, seal_update, sign_update
from server import wire
from server.recording import RecordingStrategy
from server.sealing import ServerKeys, SignedTraffic, ensure_server_keys
from server.validation import envelope_limit

RUN_ID = "run-a"
NODES = ("node-0", "node-1", "node-2")


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Flower stamps instruction messages with the running task's identity; be a ServerApp."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 0)


@dataclass
class Federation:
    """A server with registered nodes; builds what nodes send and screens it for real."""

    keys: ServerKeys
    node_keys: dict[str, Ed25519PrivateKey]
    traffic: SignedTraffic
    strategy: RecordingStrategy
    global_arrays: ArrayRecord

    def state(self, value: float) -> dict[str, torch.Tensor]:
        return {
            name: torch.full_like(t, value)
            for name, t in self.global_arrays.to_torch_state_dict().items()
        }

    def request(self, rnd: int, dst: int = 1) -> Message:
        config = ConfigRecord({wire.RUN_ID: RUN_ID, wire.ROUND: rnd})
        content = RecordDict({wire.ARRAYS: self.global_arrays, wire.CONFIG: config})
        return Message(content, dst_node_id=dst, message_type=MessageType.TRAIN)

    def envelope(
        self, node: str, rnd: int, *, value: float = 1.0, run_id: str = RUN_ID,
        signer: Ed25519PrivateKey | None = None, metrics: dict | None = None,
        sealed: bool | None = None,
    ) -> bytes:  # fmt: skip
        """What the node code sends (clients/sealing.py ServerChannel.reply does the same)."""
        payload = wire.update_payload(
            self.state(value),
            metrics if metrics is not None else {"ledger-count": rnd},
            {"name": node, "ledger-hash": "0" * 64},
        )
        common = {"signer": signer or self.node_keys[node], "run_id": run_id, "round": rnd}
        if sealed if sealed is not None else self.traffic.sealed:
            public = self.keys.exchange.public_key()
            return seal_update(payload, server_public=public, node_id=node, **common)
        return sign_update(payload, node_id=node, **common)

    def reply(self, envelope: bytes, node: str, rnd: int, dst: int = 1) -> Message:
        return Message(wire.envelope_record(envelope, node), reply_to=self.request(rnd, dst))

    def screen(self, rnd: int, replies: list[Message]):
        self.strategy._global = self.global_arrays  # what configure_train sets for the round
        self.strategy._limit = envelope_limit(self.global_arrays)
        arrays, _ = self.strategy.aggregate_train(rnd, replies)
        return arrays, self.strategy.take_rows(rnd)


def make_federation(tmp_path: Path, *, sealed: bool) -> Federation:
    keys = ensure_server_keys(tmp_path / "server-keys")
    node_keys = {name: Ed25519PrivateKey.generate() for name in NODES}
    signers = {name: key.public_key() for name, key in node_keys.items()}
    traffic = SignedTraffic(keys=keys, signers=signers, run_id=RUN_ID, sealed=sealed)
    inner = FedAvg(
        fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1,
        weighted_by_key=wire.UNIT_WEIGHT,
    )  # fmt: skip
    strategy = RecordingStrategy(inner, traffic=traffic)
    global_arrays = ArrayRecord({"w": torch.zeros(4, 3), "b": torch.zeros(3)})
    assert load_server_public(keys.exchange_public_raw, keys.exchange_fingerprint)
    return Federation(keys, node_keys, traffic, strategy, global_arrays)


@pytest.fixture
def federation(tmp_path) -> Federation:
    return make_federation(tmp_path, sealed=True)


@pytest.fixture
def plain_federation(tmp_path) -> Federation:
    return make_federation(tmp_path / "plain", sealed=False)
