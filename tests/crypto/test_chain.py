"""Signed hash chain: every kind of tampering is caught and named; crashes never tear it."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from fedmodel.crypto import chain as chain_mod
from fedmodel.crypto.chain import (
    EMPTY_HEAD,
    ZERO_HASH,
    ChainError,
    SignedChain,
    head,
    make_entry,
    rotation_body_field,
    verify_chain,
)
from fedmodel.crypto.keys import fingerprint, generate_signing_key, save_signing_key
from fedmodel.privacy.ledger import Ledger, verify_ledger

N = 5


@pytest.fixture
def key():
    return generate_signing_key()


@pytest.fixture
def chain(tmp_path, key):
    c = SignedChain(tmp_path / "log.jsonl", key)
    for i in range(N):
        c.append({"i": i, "value": 0.1 * i})
    return c


def _lines(c: SignedChain) -> list[str]:
    return c.path.read_text().splitlines(keepends=True)


def _write(c: SignedChain, lines: list[str]) -> None:
    c.path.write_text("".join(lines))


def _break(c: SignedChain, key=None):
    result = verify_chain(c.path, (key or c).public_key)
    assert not result.ok
    return result.first_break


def test_sound_chain_verifies_and_reports_its_head(chain):
    result = verify_chain(chain.path, chain.public_key)
    assert result.ok and result.total == N and len(result.entries) == N
    assert result.head.count == N
    assert result.head.hash == json.loads(_lines(chain)[-1])["hash"]
    assert head(chain.path) == result.head
    assert [e.body["i"] for e in result.entries] == list(range(N))


def test_line_format_is_the_documented_one(chain, key):
    first, second = (json.loads(line) for line in _lines(chain)[:2])
    assert list(first) == ["seq", "prev", "body", "signer", "hash", "sig"]
    assert first["seq"] == 0 and first["prev"] == ZERO_HASH and second["prev"] == first["hash"]
    canonical = json.dumps(
        {k: first[k] for k in ("seq", "prev", "body", "signer")},
        sort_keys=True,
        separators=(",", ":"),
    )
    assert first["hash"] == hashlib.sha256(canonical.encode()).hexdigest()
    assert first["signer"] == fingerprint(key.public_key())
    key.public_key().verify(base64.b64decode(first["sig"]), bytes.fromhex(first["hash"]))


def test_floats_and_odd_values_round_trip(tmp_path, key):
    c = SignedChain(tmp_path / "floats.jsonl", key)
    body = {
        "sum": 0.1 + 0.2,
        "tiny": 5e-324,
        "small": 1e-300,
        "third": 1 / 3,
        "big": 2**62,
        "neg": -0.0,
        "text": "héllo ✓",
        "nested": {"b": [1.5, None, True], "a": (1, 2)},
    }
    entry = c.append(body)
    assert entry.body["nested"]["a"] == [1, 2]
    result = verify_chain(c.path, key.public_key())
    assert result.ok
    assert result.entries[0].body["sum"] == 0.1 + 0.2
    assert result.entries[0].body["tiny"] == 5e-324


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_numbers_are_refused(tmp_path, key, bad):
    c = SignedChain(tmp_path / "nan.jsonl", key)
    with pytest.raises(ChainError, match="canonical JSON"):
        c.append({"epsilon": bad})
    assert not c.path.exists()


def test_changed_number_is_bad_hash(chain):
    lines = _lines(chain)
    entry = json.loads(lines[2])
    entry["body"]["value"] = 0.0
    lines[2] = json.dumps(entry) + "\n"
    _write(chain, lines)
    problem = _break(chain)
    assert (problem.index, problem.kind) == (2, "bad-hash")
    assert problem.describe().startswith("entry 2: bad-hash")


def test_changed_number_with_recomputed_hash_is_bad_signature(chain):
    lines = _lines(chain)
    entry = json.loads(lines[2])
    entry["body"]["value"] = 0.0
    entry["hash"] = chain_mod.entry_hash(
        entry["seq"], entry["prev"], entry["body"], entry["signer"]
    )
    lines[2] = json.dumps(entry) + "\n"
    _write(chain, lines)
    problem = _break(chain)
    assert (problem.index, problem.kind) == (2, "bad-signature")


def test_removed_middle_entry_is_broken_link(chain):
    lines = _lines(chain)
    del lines[2]
    _write(chain, lines)
    problem = _break(chain)
    assert (problem.index, problem.kind) == (2, "broken-link")
    assert "entry 1" in problem.detail


def test_removed_first_entry_is_broken_link(chain):
    _write(chain, _lines(chain)[1:])
    problem = _break(chain)
    assert (problem.index, problem.kind) == (0, "broken-link")


def test_reordered_entries_are_broken_link(chain):
    lines = _lines(chain)
    lines[2], lines[3] = lines[3], lines[2]
    _write(chain, lines)
    problem = _break(chain)
    assert (problem.index, problem.kind) == (2, "broken-link")


def _twin(tmp_path, key, name: str) -> SignedChain:
    """A second chain signed by the same key (a site's other ledger, an older install's log)."""
    twin = SignedChain(tmp_path / name, key)
    for i in range(N):
        twin.append({"i": i, "value": -1.0 * i})  # other bodies, so other hashes
    return twin


@pytest.mark.parametrize("seq", [2, N - 1])
def test_same_seq_entry_spliced_from_another_chain_of_the_same_key(tmp_path, chain, key, seq):
    # the entry is validly hashed and signed by this very key and carries the right seq: only
    # its prev link (the hash of the other chain's entry seq-1) gives it away
    twin = _twin(tmp_path, key, "twin.jsonl")
    lines = _lines(chain)
    lines[seq] = _lines(twin)[seq]
    _write(chain, lines)
    problem = _break(chain)
    assert (problem.index, problem.kind) == (seq, "broken-link")
    assert "spliced" in problem.detail and "same key" in problem.detail


def test_first_entry_spliced_from_another_chain_is_named_at_the_next_link(tmp_path, chain, key):
    # entry 0 of any chain links to the zero hash, so a foreign entry 0 passes on its own; the
    # break shows at entry 1, whose prev is the hash of the genuine entry 0
    twin = _twin(tmp_path, key, "twin.jsonl")
    lines = _lines(chain)
    lines[0] = _lines(twin)[0]
    _write(chain, lines)
    problem = _break(chain)
    assert (problem.index, problem.kind) == (1, "broken-link")
    assert "spliced" in problem.detail and "entry 0" in problem.detail


def test_ledger_entry_spliced_from_another_ledger_of_the_same_key(tmp_path):
    """The same attack on a privacy ledger: a site swaps in an entry (same node, same seq,
    signed by its own key) from a second ledger that spent less; verification names it."""
    signing = generate_signing_key()
    ledgers = {}
    for name, noise in (("real", 1.0), ("cheap", 4.0)):
        ledger = Ledger(tmp_path / name, signing, node="node-0")
        for rnd in (1, 2, 3):
            ledger.append_round("run-1", rnd, noise, 0.02, 10, 1.0, 1e-5, 500)
        ledgers[name] = ledger.path
    real = ledgers["real"].read_text().splitlines(keepends=True)
    real[1] = ledgers["cheap"].read_text().splitlines(keepends=True)[1]
    ledgers["real"].write_text("".join(real))
    report = verify_ledger(tmp_path / "real", signing.public_key())
    assert not report.ok
    assert (report.first_break.index, report.first_break.kind) == (1, "broken-link")
    assert "spliced" in report.first_break.describe()


def test_wrong_key_is_bad_signature_at_the_first_entry(chain):
    problem = _break(chain, key=SignedChain(chain.path, generate_signing_key()))
    assert (problem.index, problem.kind) == (0, "bad-signature")


def test_seq_gap_from_a_forger_holding_the_key(chain, key):
    tip = verify_chain(chain.path, key.public_key()).head
    forged = make_entry(tip.count + 3, tip.hash, {"i": 99}, key)
    with chain.path.open("a") as fh:
        fh.write(forged.to_line() + "\n")
    problem = _break(chain)
    assert (problem.index, problem.kind) == (N, "seq-gap")


def test_garbage_middle_line_is_malformed(chain):
    lines = _lines(chain)
    lines.insert(3, "not json at all\n")
    _write(chain, lines)
    problem = _break(chain)
    assert (problem.index, problem.kind) == (3, "malformed")


def test_nan_edited_into_a_line_is_malformed_not_a_crash(chain):
    lines = _lines(chain)
    lines[1] = lines[1].replace('"value":0.1', '"value":NaN')
    _write(chain, lines)
    problem = _break(chain)
    assert (problem.index, problem.kind) == (1, "malformed")


def test_torn_final_line_is_named_and_earlier_entries_still_verify(chain):
    whole = _lines(chain)[-1]
    with chain.path.open("a") as fh:
        fh.write(whole[: len(whole) // 2])  # a crash mid-append by a non-atomic writer
    result = verify_chain(chain.path, chain.public_key)
    assert (result.first_break.index, result.first_break.kind) == (N, "torn-line")
    assert len(result.entries) == N and result.total == N + 1
    assert head(chain.path).count == N


def test_append_refuses_a_broken_chain_and_leaves_it_untouched(chain):
    with chain.path.open("a") as fh:
        fh.write('{"seq": 5, "prev"')
    before = chain.path.read_bytes()
    with pytest.raises(ChainError, match=r"entry 5: torn-line.*refusing to append"):
        chain.append({"i": 5})
    assert chain.path.read_bytes() == before


def test_crash_during_the_atomic_write_keeps_the_old_file(chain, monkeypatch):
    before = chain.path.read_bytes()

    def power_cut(src, dst):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", power_cut)
    with pytest.raises(OSError, match="simulated crash"):
        chain.append({"i": 5})
    monkeypatch.undo()
    assert chain.path.read_bytes() == before
    assert verify_chain(chain.path, chain.public_key).ok
    assert chain.append({"i": 5}).seq == N


def test_stale_temp_files_of_a_killed_writer_are_cleaned(chain):
    stale = chain.path.parent / f".{chain.path.name}.abc123.tmp"
    stale.write_text('{"half": ')
    chain.append({"i": 5})
    assert not stale.exists()


def test_missing_file(tmp_path, key):
    assert head(tmp_path / "none.jsonl") == EMPTY_HEAD
    with pytest.raises(ChainError, match="no such chain file"):
        verify_chain(tmp_path / "none.jsonl", key.public_key())
    assert SignedChain(tmp_path / "none.jsonl", key).verify().ok


def test_lock_timeout_names_the_lock_file(chain, key):
    other = SignedChain(chain.path, key, lock_timeout_s=0.2)
    with chain.locked(), pytest.raises(ChainError, match=r"\.lock: still locked"):
        other.append({"i": 99})


def test_several_entries_go_to_disk_in_one_write_and_chain_in_order(chain, key):
    written = chain.append_all_with(lambda entries: [{"i": len(entries)}, {"i": len(entries) + 1}])
    assert [e.seq for e in written] == [N, N + 1] and written[1].prev == written[0].hash
    report = verify_chain(chain.path, key.public_key())
    assert report.ok and report.head.hash == written[1].hash
    assert chain.append_all_with(lambda entries: []) == ()
    rotation = rotation_body_field(generate_signing_key().public_key())
    with pytest.raises(ChainError, match="rotation must be the last"):
        chain.append_all_with(lambda entries: [rotation, {"i": 0}])
    assert verify_chain(chain.path, key.public_key()).head == report.head  # nothing written


def test_append_with_computes_the_body_from_the_verified_entries(chain):
    entry = chain.append_with(lambda entries: {"total": sum(e.body["i"] for e in entries)})
    assert entry.body == {"total": sum(range(N))}
    assert chain.append_with(lambda entries: None) is None
    assert verify_chain(chain.path, chain.public_key).head.count == N + 1


# --- other processes ----------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys
    from fedmodel.crypto.chain import SignedChain
    from fedmodel.crypto.keys import load_signing_key
    path, key_file, name, count = sys.argv[1:5]
    chain = SignedChain(path, load_signing_key(key_file))
    for i in range(int(count)):
        chain.append({"writer": name, "i": i})
        print(i, flush=True)
    """
)


def _writer(tmp_path, key_file, name: str, count: int) -> subprocess.Popen:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    args = [str(script), str(tmp_path / "shared.jsonl"), str(key_file), name, str(count)]
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, text=True)


@pytest.fixture
def key_file(tmp_path, key):
    return save_signing_key(key, tmp_path / "writer.ed25519")


def test_two_concurrent_processes_never_corrupt_the_chain(tmp_path, key, key_file):
    writers = [_writer(tmp_path, key_file, name, 15) for name in ("a", "b")]
    for w in writers:
        assert w.wait(timeout=60) == 0
    result = verify_chain(tmp_path / "shared.jsonl", key.public_key())
    assert result.ok and result.head.count == 30
    for name in ("a", "b"):
        mine = [e.body["i"] for e in result.entries if e.body["writer"] == name]
        assert mine == list(range(15))


def test_killing_a_writer_mid_run_leaves_a_sound_chain(tmp_path, key, key_file):
    writer = _writer(tmp_path, key_file, "victim", 100_000)
    assert writer.stdout.readline()  # at least one append done, more in flight
    time.sleep(0.2)
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=10)
    result = verify_chain(tmp_path / "shared.jsonl", key.public_key())
    assert result.ok and result.head.count >= 1
    survivor = SignedChain(tmp_path / "shared.jsonl", key)
    assert survivor.append({"writer": "after", "i": 0}).seq == result.head.count
    assert not list(tmp_path.glob(".shared.jsonl.*.tmp"))
