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

from clients.sealing import SealedChannel, ServerPin
from fedmodel.crypto.seal import load_server_public
from server import wire
from server.recording import RecordingStrategy
from server.sealing import SealedTraffic, ServerKeys, ensure_server_keys

RUN_ID = "run-a"
NODES = ("node-0", "node-1")


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
    traffic: SealedTraffic
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
        signer: Ed25519PrivateKey | None = None, examples: int = 10,
    ) -> bytes:  # fmt: skip
        channel = SealedChannel(self.pin(), self.keys.exchange.public_key(), run_id, rnd)
        record = channel.seal(
            self.state(value),
            {"num-examples": examples, "ledger-count": rnd},
            {"name": node, "ledger-hash": "0" * 64},
            signer or self.node_keys[node],
        )
        return record[wire.SEALED][wire.ENVELOPE]

    def reply(self, envelope: bytes, node: str, rnd: int, dst: int = 1) -> Message:
        return Message(wire.sealed_record(envelope, node), reply_to=self.request(rnd, dst))

    def pin(self) -> ServerPin:
        return ServerPin(self.keys.exchange_fingerprint, self.keys.signing.public_key(), Path("-"))

    def screen(self, rnd: int, replies: list[Message]):
        self.strategy._global = self.global_arrays
        arrays, _ = self.strategy.aggregate_train(rnd, replies)
        return arrays, self.strategy.take_rows(rnd)


@pytest.fixture
def federation(tmp_path) -> Federation:
    keys = ensure_server_keys(tmp_path / "server-keys")
    node_keys = {name: Ed25519PrivateKey.generate() for name in NODES}
    signers = {name: key.public_key() for name, key in node_keys.items()}
    traffic = SealedTraffic(keys=keys, signers=signers, run_id=RUN_ID)
    inner = FedAvg(fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1)
    strategy = RecordingStrategy(inner, sealing=traffic)
    global_arrays = ArrayRecord({"w": torch.zeros(4, 3), "b": torch.zeros(3)})
    assert load_server_public(keys.exchange_public_raw, keys.exchange_fingerprint)
    return Federation(keys, node_keys, traffic, strategy, global_arrays)
