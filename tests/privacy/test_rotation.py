"""A node's signing key can be rotated; its epsilon carries over and its old key stops signing."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from fedmodel.cli.main import app
from fedmodel.config import PrivacyBudget
from fedmodel.crypto.chain import SignedChain, rotation_body_field, verify_chain
from fedmodel.crypto.keys import generate_signing_key, load_verify_key, public_path
from fedmodel.privacy.ledger import Ledger, LedgerError, verify_ledger
from fedmodel.scenarios import apply_overrides
from tests.federation.helpers import small_tabular
from tests.nodebench import NodeBench, reply_kind


def test_a_chain_follows_a_rotation_and_nothing_else(tmp_path):
    old, new = generate_signing_key(), generate_signing_key()
    path = tmp_path / "chain.jsonl"
    SignedChain(path, old).append({"n": 1, **rotation_body_field(new.public_key())})
    SignedChain(path, new, first_key=old.public_key()).append({"n": 2})
    result = verify_chain(path, old.public_key())
    assert result.ok and result.total == 2
    with pytest.raises(Exception, match="current key"):  # the retired key may not append
        SignedChain(path, old).append({"n": 3})
    # an entry the retired key signs after the hand-over breaks the chain
    lines = path.read_text().splitlines(keepends=True)
    forged = tmp_path / "forged.jsonl"
    forged.write_text(lines[0])
    SignedChain(tmp_path / "scratch.jsonl", old)  # (a writer for the same key, unused)
    from fedmodel.crypto.chain import make_entry

    rotated = verify_chain(path, old.public_key()).entries[0]
    bad = make_entry(1, rotated.hash, {"n": 2}, old)
    forged.write_text(lines[0] + bad.to_line() + "\n")
    broken = verify_chain(forged, old.public_key())
    assert broken.first_break is not None and broken.first_break.kind == "bad-signature"


def test_rotating_a_node_key_keeps_its_epsilon(tmp_path):
    scenario = apply_overrides(small_tabular("fedavg"), {"federation.rounds": 3}, "t")
    bench = NodeBench.create(
        tmp_path, scenario.model_copy(update={"budget": PrivacyBudget(epsilon=10, delta=1e-5)})
    )
    assert reply_kind(bench.run(bench.request("run-1", 1))) == "update"
    key = bench.nodes / "node-0" / "keys" / "signing.ed25519"
    registered = load_verify_key(public_path(key))  # what the coordinator holds
    result = CliRunner().invoke(app, ["keys", "rotate", "--config", str(bench.node_file(0))])
    assert result.exit_code == 0, result.output
    assert reply_kind(bench.run(bench.request("run-1", 2))) == "update"  # signed by the new key
    report = verify_ledger(bench.nodes / "node-0" / "ledger", registered)
    assert report.ok, report.summary()
    kinds = [e.kind for e in report.entries]
    assert kinds == ["policy", "round", "commit", "rotation", "round", "commit"]
    rotation = report.entries[3]
    assert rotation.history == report.entries[1].history  # the history travels with the key
    spends = [e for e in report.entries if e.spends]
    assert spends[1].epsilon > spends[0].epsilon  # continued, not reset
    retired = next((bench.nodes / "node-0" / "keys").glob("signing.ed25519.retired-*[!b]"))
    from fedmodel.crypto.keys import load_signing_key

    with pytest.raises(LedgerError, match="current key"):
        Ledger(bench.nodes / "node-0" / "ledger", load_signing_key(retired))
