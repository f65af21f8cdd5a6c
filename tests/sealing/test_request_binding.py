"""Second-round attacks from the review of the signed-request design, each against the real node
round: a request is for one node, now, and for the ledger the coordinator last saw; a restored
node folder never repeats a noise stream; a crafted model cannot turn rows into NaN; a relay's
refusal never stands in for a node's answer; a site that keeps its size private says no figure."""

from __future__ import annotations

import shutil

import pytest
import torch
from flwr.app import Message

from fedmodel.config import PrivacyBudget
from fedmodel.crypto.seal import (
    ReplayGuard,
    open_signed_update,
    sign_request,
    state_dict_to_bytes,
)
from fedmodel.models import build_model
from fedmodel.privacy.highwater import LedgerRollback
from fedmodel.scenarios import apply_overrides
from server import wire
from tests.federation.helpers import small_tabular
from tests.nodebench import NodeBench, blob_of, relay_edit, with_blob


@pytest.fixture
def bench(tmp_path) -> NodeBench:
    scenario = apply_overrides(small_tabular("fedavg"), {"federation.rounds": 5}, "t")
    capped = scenario.model_copy(update={"budget": PrivacyBudget(epsilon=20, delta=1e-5)})
    return NodeBench.create(tmp_path, capped)


def opened(bench: NodeBench, reply, run_id: str, rnd: int, pid: int = 0):
    from fedmodel.crypto.keys import load_verify_key, public_path

    folder = bench.nodes / f"node-{pid}"
    key = load_verify_key(public_path(folder / "keys" / "signing.ed25519"))
    payload = open_signed_update(
        reply[wire.UPDATE][wire.ENVELOPE], known_signers={f"node-{pid}": key},
        run_id=run_id, round=rnd, seen=ReplayGuard(),
    ).payload  # fmt: skip
    return wire.update_from_payload(payload)


def test_a_request_signed_for_another_node_is_refused(bench):
    reply = bench.run(bench.request("run-1", 1, pid=1), pid=0)  # node-1's request, at node-0
    assert reply[wire.REFUSAL]["reason"] == "request signed for another node"
    assert bench.spends() == []


def test_an_expired_request_is_refused(bench):
    config = bench.signed_config("run-1", 1)
    config[wire.NOT_AFTER] = 1  # a request from 1970, replayed now
    blob = sign_request(bench.model_payload(), bench.keys.signing, config)
    reply = bench.run(with_blob(bench.request("run-1", 1), blob))
    assert reply[wire.REFUSAL]["reason"] == "request expired"
    assert bench.spends() == []


def test_an_unverified_request_is_refused_under_no_run(bench):
    forged = relay_edit(blob_of(bench.request("run-1", 1)), lambda c: {**c, wire.NUM_ROUNDS: 1})
    reply = bench.run(with_blob(bench.request("run-1", 1), forged))
    refusal = bench.ledger_entries()[-1]
    assert refusal.kind == "refusal" and refusal.run_id == wire.UNVERIFIED_RUN
    assert reply[wire.REFUSAL]["reason"] == "request not verified (bad-signature)"


def test_a_ledger_behind_the_coordinators_record_stops_training(bench):
    """The whole node folder restored from a backup takes its high-water mark along; the head
    the coordinator signs into the next request does not go back with it."""
    backup = bench.nodes.parent / "backup"
    shutil.copytree(bench.nodes / "node-0", backup)
    first = opened(bench, bench.run(bench.request("run-1", 1)), "run-1", 1)
    head = {
        "hash": first[wire.NODE]["ledger-hash"],
        "count": int(first[wire.METRICS]["ledger-count"]),
    }
    shutil.rmtree(bench.nodes / "node-0")
    shutil.copytree(backup, bench.nodes / "node-0")
    with pytest.raises(LedgerRollback, match="the coordinator last saw this ledger"):
        bench.run(bench.request("run-1", 2, **{wire.EXPECTED_HEAD: head}))


def test_a_restored_node_folder_never_repeats_a_noise_stream(bench):
    """Restored from a backup before any server head reaches it, a node answers a new request
    at the same ledger position: its noise must still be fresh."""
    backup = bench.nodes.parent / "backup"
    shutil.copytree(bench.nodes / "node-0", backup)
    first = opened(bench, bench.run(bench.request("run-a", 1)), "run-a", 1)
    shutil.rmtree(bench.nodes / "node-0")
    shutil.copytree(backup, bench.nodes / "node-0")
    second = opened(bench, bench.run(bench.request("run-b", 1)), "run-b", 1)
    a, b = first[wire.ARRAYS].to_torch_state_dict(), second[wire.ARRAYS].to_torch_state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)


def crafted_model(bench: NodeBench, threshold: float) -> bytes:
    """Finite weights whose first logit overflows to +inf exactly when feature 3 > threshold."""
    model = build_model(bench.scenario.model, (30,), 2)
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    state["net.0.weight"][0, 3] = 1e30
    state["net.0.bias"][0] = -1e30 * threshold
    state["net.3.weight"][0, 0] = 1e30
    return state_dict_to_bytes(state)


@pytest.mark.parametrize("threshold", [-10.0, 10.0])  # every row overflows / none does
def test_a_crafted_model_cannot_make_a_site_release_nan(bench, threshold):
    bench.set_node(0, **{"policy.share_eval_metrics": True})
    payload = crafted_model(bench, threshold)
    train = sign_request(payload, bench.keys.signing, bench.signed_config("run-t", 1))
    update = opened(bench, bench.run(with_blob(bench.request("run-t", 1), train)), "run-t", 1)
    assert all(
        bool(torch.isfinite(t).all()) for t in update[wire.ARRAYS].to_torch_state_dict().values()
    )
    evaluate = sign_request(
        payload, bench.keys.signing, bench.signed_config("run-e", 1, task="evaluate")
    )
    from clients.evaluate_round import run_evaluate_round

    reply = run_evaluate_round(with_blob(bench.request("run-e", 1), evaluate), bench.context(0))
    metrics = opened(bench, reply, "run-e", 1)[wire.METRICS]
    assert all(
        abs(float(metrics[k])) < 1e9 for k in ("eval-count", "eval-correct", "eval-loss-sum")
    )


def test_a_site_keeping_its_size_private_names_no_figure(bench):
    target = apply_overrides(
        bench.scenario, {"dp.target_epsilon": 2.0, "dp.delta": 1e-2}, "t",
        clear=("dp.noise_multiplier",),
    )  # fmt: skip
    bench.set_node(0, **{"policy.dataset_size_public": False})
    refused = bench.run(bench.request("run-1", 1, scenario=target))
    assert refused[wire.REFUSAL]["reason"] == "delta above this site's limit"
    ok = apply_overrides(target, {"dp.delta": 1e-5}, "t")
    metrics = opened(bench, bench.run(bench.request("run-2", 1, scenario=ok)), "run-2", 1)[
        wire.METRICS
    ]
    assert not {"noise-multiplier", "sample-rate", "steps", "epsilon"} & set(metrics)
    bench.set_node(0, **{"budget.epsilon": 0.5})
    over = bench.run(bench.request("run-3", 1, scenario=ok))
    reason = over[wire.REFUSAL]["reason"]
    assert reason == "this round would pass the site's cap", reason


def test_evaluation_obeys_the_site_policy(bench):
    from clients.evaluate_round import run_evaluate_round

    bench.set_node(0, **{"policy.share_eval_metrics": True, "policy.allowed_datasets": ["mnist"]})
    reply = run_evaluate_round(bench.request("run-1", 1, task="evaluate"), bench.context(0))
    assert "does not allow dataset" in reply[wire.REFUSAL]["reason"]
    assert bench.spends() == []


def test_a_relay_refusal_never_crowds_out_the_genuine_answer(bench, monkeypatch):
    """The review: the relay corrupts the request, the node's refusal of it reaches the server
    first and was counted as the node's answer, so the genuine update became a duplicate."""
    from flwr.serverapp.strategy import FedAvg
    from flwr.supercore.task_identity import TaskIdentity

    from fedmodel.crypto.keys import load_verify_key, public_path
    from server.recording import RecordingStrategy
    from server.sealing import SignedTraffic
    from server.validation import envelope_limit

    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)
    genuine = bench.request("run-x", 1)
    forged = with_blob(genuine, relay_edit(blob_of(genuine), lambda c: {**c, "x": 1}))
    replies = [bench.run(forged), bench.run(genuine)]
    key = load_verify_key(public_path(bench.nodes / "node-0" / "keys" / "signing.ed25519"))
    traffic = SignedTraffic(bench.keys, {"node-0": key}, "run-x", sealed=False)
    inner = FedAvg(min_train_nodes=1, min_available_nodes=1, weighted_by_key=wire.UNIT_WEIGHT)
    strategy = RecordingStrategy(inner, traffic=traffic)
    model = build_model(bench.scenario.model, (30,), 2)
    from flwr.app import ArrayRecord, MessageType, RecordDict

    strategy._global = ArrayRecord(model.state_dict())
    strategy._limit = envelope_limit(strategy._global)
    request = Message(RecordDict(), dst_node_id=100, message_type=MessageType.TRAIN)
    messages = [Message(r, reply_to=request) for r in replies]
    for m in messages:
        m.metadata.__dict__["_src_node_id"] = 100
    arrays, _ = strategy.aggregate_train(1, messages)
    rows = strategy.take_rows(1)
    assert [r["status"] for r in rows] == ["rejected", "ok"], rows
    assert "could not verify a request" in rows[0]["reason"] and arrays is not None
