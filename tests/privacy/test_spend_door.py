"""One door spends privacy: concurrent requests, rollbacks, the mechanism, what leaves a site.

The DP review reproduced each of these on the old node code: two runs started together on one
node (cap 5) both trained, ending at 5.47, with bit-identical updates (same batches, same noise);
truncating the ledger to one line took a node from "refused" back to "allowed"; fixed batches
were signed as Poisson; delta 1e-3 ran on 98-row sites; loss, accuracy and the exact example
count left every site unnoised. Every test drives the real ClientApp round on requests the
server's own code signed, with real Opacus training and the real ledger.
"""

from __future__ import annotations

import multiprocessing
import queue

import pytest
import torch

from fedmodel.config import ConfigError, PrivacyBudget
from fedmodel.crypto.seal import (
    ReplayGuard,
    SealError,
    open_signed_update,
    state_dict_from_bytes,
)
from fedmodel.privacy.highwater import LedgerRollback
from fedmodel.privacy.ledger import LEDGER_FILE
from fedmodel.scenarios import apply_overrides
from server import wire
from tests.federation.helpers import small_tabular
from tests.nodebench import NodeBench, blob_of, node_process, reply_kind

# breast-cancer, 2 nodes: node-0 holds 227 training rows; batch 32 -> q = 1/8, 8 steps a round.
# At noise 1.0 and delta 1e-5 one round costs epsilon 3.18 (PRV), two 4.03, three 4.69.
ONE_ROUND_CAP = PrivacyBudget(epsilon=3.6, delta=1e-5)
TWO_ROUND_CAP = PrivacyBudget(epsilon=4.5, delta=1e-5)


def make_bench(tmp_path, cap: PrivacyBudget, clear=(), **overrides) -> NodeBench:
    scenario = apply_overrides(
        small_tabular("fedavg"), {"federation.rounds": 3, **overrides}, "t", clear=clear
    ).model_copy(update={"budget": cap})
    return NodeBench.create(tmp_path, scenario)


def race(bench: NodeBench, runs: list[str]) -> list[tuple[str, object]]:
    """One process per run, each answering round 1 of its run on node-0 at the same moment."""
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(len(runs)), ctx.Queue()
    blobs = [blob_of(bench.request(run_id, 1)) for run_id in runs]
    procs = [
        ctx.Process(target=node_process, args=(blob, str(bench.nodes), 0, 2, barrier, out))
        for blob in blobs
    ]
    for p in procs:
        p.start()
    try:
        results = [out.get(timeout=240) for _ in procs]
    except queue.Empty:
        pytest.fail("a node process did not answer")
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return results


def node_key(bench: NodeBench):
    from fedmodel.crypto.keys import load_verify_key, public_path

    return load_verify_key(public_path(bench.nodes / "node-0" / "keys" / "signing.ed25519"))


def opened_payload(bench: NodeBench, envelope: bytes, run_id: str) -> bytes:
    checks = {"known_signers": {"node-0": node_key(bench)}, "round": 1, "seen": ReplayGuard()}
    return open_signed_update(envelope, run_id=run_id, **checks).payload


def opened_update(bench: NodeBench, envelope: bytes, runs: list[str]) -> dict[str, torch.Tensor]:
    for run_id in runs:
        try:
            tensors = state_dict_from_bytes(opened_payload(bench, envelope, run_id))
        except SealError:
            continue
        tensors.pop(wire.REPLY_TENSOR)
        return tensors
    raise AssertionError("envelope of none of the runs")


def test_concurrent_requests_never_pass_the_cap(tmp_path):
    bench = make_bench(tmp_path, ONE_ROUND_CAP)
    results = race(bench, ["run-a", "run-b"])
    assert sorted(kind for kind, _ in results) == ["refusal", "update"], results
    refusal = next(text for kind, text in results if kind == "refusal")
    assert "would exceed the node's cap" in refusal
    spends = bench.spends()
    assert len(spends) == 1 and spends[-1].epsilon <= ONE_ROUND_CAP.epsilon


def test_concurrent_requests_never_share_a_noise_stream(tmp_path):
    bench = make_bench(tmp_path, TWO_ROUND_CAP)
    results = race(bench, ["run-a", "run-b"])
    assert [kind for kind, _ in results] == ["update", "update"], results
    first, second = (opened_update(bench, env, ["run-a", "run-b"]) for _, env in results)
    assert any(not torch.equal(first[k], second[k]) for k in first)
    spends = bench.spends()
    assert len(spends) == 2 and spends[-1].epsilon > spends[0].epsilon  # each saw the other


def _trained_once(tmp_path) -> NodeBench:
    bench = make_bench(tmp_path, TWO_ROUND_CAP)
    assert reply_kind(bench.run(bench.request("run-1", 1))) == "update"
    return bench


def test_a_truncated_ledger_blocks_training(tmp_path):
    bench = _trained_once(tmp_path)
    ledger = bench.nodes / "node-0" / "ledger" / LEDGER_FILE
    ledger.write_text(ledger.read_text().splitlines(keepends=True)[0])  # keep the policy entry
    with pytest.raises(LedgerRollback, match="only 1 entries, the high-water mark says 3"):
        bench.run(bench.request("run-1", 2))
    assert len(ledger.read_text().splitlines()) == 1  # nothing was appended


def test_a_deleted_ledger_blocks_training(tmp_path):
    bench = _trained_once(tmp_path)
    (bench.nodes / "node-0" / "ledger" / LEDGER_FILE).unlink()
    with pytest.raises(LedgerRollback, match=r"missing or empty.*restore the ledger folder"):
        bench.run(bench.request("run-1", 2))


def test_a_forked_ledger_blocks_training(tmp_path):
    """Another ledger of the same node and key, as long as the real one: signed, sound, and not
    the one the mark remembers."""
    bench = _trained_once(tmp_path)
    ledger = bench.nodes / "node-0" / "ledger" / LEDGER_FILE
    real = ledger.read_text()
    mark = (bench.nodes / "node-0" / "ledger.hwm.json").read_text()
    ledger.unlink()
    (bench.nodes / "node-0" / "ledger.hwm.json").unlink()
    assert reply_kind(bench.run(bench.request("run-other", 1))) == "update"  # a fork of 3 entries
    (bench.nodes / "node-0" / "ledger.hwm.json").write_text(mark)
    assert ledger.read_text() != real
    with pytest.raises(LedgerRollback, match="forked or replaced"):
        bench.run(bench.request("run-1", 2))


def test_a_missing_mark_blocks_training_until_the_site_adopts_its_ledger(tmp_path):
    from typer.testing import CliRunner

    from fedmodel.cli.main import app

    bench = _trained_once(tmp_path)
    (bench.nodes / "node-0" / "ledger.hwm.json").unlink()
    with pytest.raises(LedgerRollback, match="no high-water mark"):
        bench.run(bench.request("run-1", 2))
    result = CliRunner().invoke(app, ["ledger", "adopt", "--config", str(bench.node_file(0))])
    assert result.exit_code == 0, result.output
    assert reply_kind(bench.run(bench.request("run-1", 2))) == "update"


def test_fixed_batches_are_refused_not_mislabelled():
    with pytest.raises(ConfigError, match="poisson_sampling = false is refused"):
        apply_overrides(small_tabular("fedavg"), {"dp.poisson_sampling": False}, "t")


def test_a_simulation_asking_for_fixed_batches_is_one_line_exit_2(tmp_path):
    from typer.testing import CliRunner

    from fedmodel.cli.main import app

    toml = tmp_path / "s.toml"
    toml.write_text('name = "x"\n[dp]\nnoise_multiplier = 1.0\npoisson_sampling = false\n')
    result = CliRunner().invoke(app, ["simulate", str(toml), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "poisson_sampling = false is refused" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_delta_above_one_tenth_over_n_is_refused_by_default(tmp_path):
    bench = make_bench(tmp_path, PrivacyBudget(epsilon=5.0, delta=1e-3), **{"dp.delta": 1e-3})
    reply = bench.run(bench.request("run-1", 1))
    assert (
        "delta 0.001 above this site's limit 0.000439 (1/(10 n))" in reply[wire.REFUSAL]["reason"]
    )
    assert bench.spends() == []
    bench.set_node(0, **{"policy.max_delta": 0.001})  # the site decides otherwise, explicitly
    assert reply_kind(bench.run(bench.request("run-2", 1))) == "update"
    assert bench.ledger_entries()[-3].kind == "policy"  # the change was signed before the round


def _reply_payload_metrics(bench: NodeBench, reply) -> dict:
    payload = opened_payload(bench, reply[wire.UPDATE][wire.ENVELOPE], "run-1")
    return dict(wire.update_from_payload(payload)[wire.METRICS])


def test_a_reply_carries_no_loss_accuracy_or_count_by_default(tmp_path):
    bench = make_bench(tmp_path, TWO_ROUND_CAP)
    metrics = _reply_payload_metrics(bench, bench.run(bench.request("run-1", 1)))
    assert not {"train-loss", "train-accuracy", "num-examples"} & set(metrics), metrics
    assert {"epsilon", "noise-multiplier", "sample-rate", "steps"} <= set(metrics)
    (spend,) = bench.spends()
    assert spend.releases == ("model-update",) and len(spend.history) == 1


def _was_noised(metrics: dict, true_count: int) -> bool:
    """Whether the released count and accuracy show the Gaussian noise, surely, not just likely.

    The count alone is rounded: with std 8*sqrt(3) ~ 14 it lands on the true count about one
    time in 35 (CI saw it). The accuracy is noised correct over the noised, unrounded count, so
    it is a multiple of 1/n only by a measure-zero accident, unless clamped to 0 or 1 as well.
    """
    scaled = metrics["train-accuracy"] * true_count
    return metrics["num-examples"] != true_count or abs(scaled - round(scaled)) > 1e-6


def test_opted_in_metrics_are_noised_and_charged(tmp_path):
    bench = make_bench(tmp_path, TWO_ROUND_CAP)
    bench.set_node(0, **{"policy.share_train_metrics": True})
    metrics = _reply_payload_metrics(bench, bench.run(bench.request("run-1", 1)))
    assert {"train-loss", "train-accuracy", "num-examples"} <= set(metrics)
    assert _was_noised(metrics, true_count=227)
    (spend,) = bench.spends()
    assert spend.releases == ("model-update", "train-metrics")
    assert spend.history[1] == (8.0, 1.0, 1)  # the Gaussian release, in the accountant's terms
    plain = make_bench(tmp_path / "plain", TWO_ROUND_CAP)
    plain.run(plain.request("run-1", 1))
    assert spend.epsilon > plain.spends()[0].epsilon  # and it costs epsilon


def test_target_epsilon_caps_the_whole_run(tmp_path):
    overrides = {"dp.target_epsilon": 3.0, "federation.rounds": 2}
    bench = make_bench(tmp_path, TWO_ROUND_CAP, clear=("dp.noise_multiplier",), **overrides)
    state = None
    for rnd in (1, 2):
        assert reply_kind(bench.run(bench.request("run-1", rnd), state=state)) == "update"
    this_run = bench.spends()
    assert (
        this_run[-1].epsilon <= 3.0 and this_run[0].noise_multiplier == this_run[1].noise_multiplier
    )
    assert (
        "past the run's plan of 2 rounds"
        in bench.run(bench.request("run-1", 3))[wire.REFUSAL]["reason"]
    )


def test_error_replies_carry_no_path_and_no_value(tmp_path, monkeypatch):
    """The review: error replies carried local paths and cell values to the relay."""
    from flwr.app import Message, MessageType
    from flwr.supercore.task_identity import TaskIdentity

    from clients.client_app import train

    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)
    bench = _trained_once(tmp_path)
    ledger = bench.nodes / "node-0" / "ledger" / LEDGER_FILE
    ledger.write_text("")  # a rollback: the node must stop, and say so without its paths
    content = bench.request("run-1", 2)
    msg = Message(content, dst_node_id=100, message_type=MessageType.TRAIN)
    reply = train(msg, bench.context(0))
    assert reply.has_error()
    reason = reply.error.reason
    assert reason.startswith("ledger-rollback: ") and "site's log" in reason
    assert "/" not in reason and str(tmp_path) not in reason
    assert not any(ch.isdigit() for ch in reason)  # no count, no hash, no value


def test_node_config_with_the_mark_inside_the_ledger_folder_is_refused(tmp_path):
    bench = make_bench(tmp_path, TWO_ROUND_CAP)
    bench.set_node(0, high_water_mark="ledger/hwm.json")
    with pytest.raises(ConfigError, match="high_water_mark must be outside ledger_dir"):
        bench.run(bench.request("run-1", 1))
