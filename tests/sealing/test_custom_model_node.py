"""A node imports a coordinator-named model factory only when its own ``node.toml`` lists it with
the SHA-256 of its sources; otherwise the request is refused, signed, before anything is spent or
imported (the test module writes a marker file when it is imported)."""

from __future__ import annotations

import pytest
from torch import nn

from clients.evaluate_round import run_evaluate_round
from fedmodel.crypto.seal import state_dict_to_bytes
from fedmodel.models.custom import factory_digest
from fedmodel.privacy.ledger import verify_ledger
from fedmodel.scenarios import apply_overrides
from server import wire
from tests.federation.helpers import small_tabular
from tests.models.test_custom_factory import BATCHNORM, write_factory
from tests.nodebench import NodeBench, reply_kind


def custom_bench(tmp_path, monkeypatch, body: str | None = None, **model) -> tuple:
    """A bench whose scenario names a fresh factory package; the global model the request carries
    is built here without importing it (an equivalent plain torch module), so only the node can
    import the package."""
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    module, marker = write_factory(tmp_path / "site", *([body] if body else []))
    spec = f"{module}:make"
    overrides = {"model.name": "custom", "model.factory": spec, **model}
    scenario = apply_overrides(small_tabular("fedavg"), overrides, "t")
    bench = NodeBench.create(tmp_path, scenario)
    # a virtual site approves the scenario's factory; this one is a real site: it has not, yet
    bench.set_node(0, **{"policy.allowed_model_factories": {}})
    reference = reference_model(body is not None, model.get("model.fix_for_dp", False))
    payload = state_dict_to_bytes(reference.state_dict())
    monkeypatch.setattr(bench, "model_payload", lambda scenario=None: payload)
    return bench, spec, marker


def reference_model(batchnorm: bool, fixed: bool) -> nn.Module:
    if not batchnorm:
        return nn.Sequential(nn.Flatten(), nn.Linear(30, 2))
    norm = nn.GroupNorm(2, 2) if fixed else nn.BatchNorm1d(2)
    return nn.Sequential(nn.Unflatten(1, (2, 15)), norm, nn.Flatten(), nn.Linear(30, 2))


def approve(bench: NodeBench, spec: str, digest: str) -> None:
    bench.set_node(0, **{"policy.allowed_model_factories": {spec: digest}})


def assert_refused_untouched(bench: NodeBench, reply, marker, reason: str) -> None:
    assert reply_kind(reply) == "refusal"
    assert reason in reply[wire.REFUSAL]["reason"]
    assert bench.spends() == []
    assert not marker.exists()
    ledger = verify_ledger(bench.nodes / "node-0" / "ledger")
    assert ledger.ok and ledger.entries[-1].kind == "refusal"


def test_a_listed_factory_trains(tmp_path, monkeypatch):
    bench, spec, marker = custom_bench(tmp_path, monkeypatch)
    approve(bench, spec, factory_digest(spec))
    reply = bench.run(bench.request("run-c", 1))
    assert reply_kind(reply) == "update"
    assert len(bench.spends()) == 1
    assert marker.exists()


def test_an_unlisted_factory_is_refused_before_import(tmp_path, monkeypatch):
    bench, spec, marker = custom_bench(tmp_path, monkeypatch)
    reply = bench.run(bench.request("run-c", 1))
    assert_refused_untouched(
        bench, reply, marker, f"site policy does not allow model factory {spec}"
    )


def test_a_factory_listed_with_another_hash_is_refused_before_import(tmp_path, monkeypatch):
    """The request's own factory_sha256 is the coordinator's word: the node ignores it."""
    bench, spec, marker = custom_bench(tmp_path, monkeypatch)
    approve(bench, spec, "0" * 64)
    claimed = apply_overrides(bench.scenario, {"model.factory_sha256": factory_digest(spec)}, "t")
    reply = bench.run(bench.request("run-c", 1, scenario=claimed))
    assert_refused_untouched(bench, reply, marker, f"model {spec} could not be built")


def test_a_factory_changed_after_approval_is_refused_before_import(tmp_path, monkeypatch):
    bench, spec, marker = custom_bench(tmp_path, monkeypatch)
    approve(bench, spec, factory_digest(spec))
    source = tmp_path / "site" / spec.split(".")[0] / "models.py"
    source.write_text(source.read_text() + "\nimport os  # a new line after approval\n")
    reply = bench.run(bench.request("run-c", 1))
    assert_refused_untouched(bench, reply, marker, f"model {spec} could not be built")


def test_allowed_models_must_name_custom_too(tmp_path, monkeypatch):
    bench, spec, marker = custom_bench(tmp_path, monkeypatch)
    approve(bench, spec, factory_digest(spec))
    bench.set_node(0, **{"policy.allowed_models": ["mlp"]})
    reply = bench.run(bench.request("run-c", 1))
    assert_refused_untouched(bench, reply, marker, "site policy does not allow model 'custom'")
    bench.set_node(0, **{"policy.allowed_models": ["mlp", "custom"]})
    assert reply_kind(bench.run(bench.request("run-d", 1))) == "update"


@pytest.mark.parametrize("fixed", [False, True])
def test_batchnorm_trains_only_when_the_task_allows_the_fix(tmp_path, monkeypatch, fixed):
    bench, spec, _ = custom_bench(tmp_path, monkeypatch, BATCHNORM, **{"model.fix_for_dp": fixed})
    approve(bench, spec, factory_digest(spec))
    reply = bench.run(bench.request("run-c", 1))
    if fixed:
        assert reply_kind(reply) == "update" and len(bench.spends()) == 1
    else:
        assert reply_kind(reply) == "refusal" and bench.spends() == []
        assert f"model {spec} could not be built" in reply[wire.REFUSAL]["reason"]


def test_evaluation_refuses_a_changed_factory_before_import(tmp_path, monkeypatch):
    bench, spec, marker = custom_bench(tmp_path, monkeypatch)
    bench.set_node(0, **{"policy.share_eval_metrics": True})
    approve(bench, spec, "f" * 64)
    reply = run_evaluate_round(bench.request("run-c", 1, task="evaluate"), bench.context())
    assert_refused_untouched(bench, reply, marker, f"model {spec} could not be built")
    approve(bench, spec, factory_digest(spec))
    reply = run_evaluate_round(bench.request("run-e", 1, task="evaluate"), bench.context())
    assert reply_kind(reply) == "update", reply[wire.REFUSAL]["reason"]
    assert marker.exists()
