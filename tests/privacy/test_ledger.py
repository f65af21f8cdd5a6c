"""The privacy ledger: cumulative epsilon over every run, tampering named, restarts survived."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fedmodel.crypto.chain import ZERO_HASH, ChainHead, entry_hash
from fedmodel.crypto.keys import generate_signing_key, load_verify_key, save_signing_key
from fedmodel.privacy.accountant import epsilon_from_history
from fedmodel.privacy.ledger import (
    SIGNER_FILE,
    Ledger,
    LedgerError,
    server_heads,
    verify_ledger,
)

SPENDING = 4  # rounds in the built ledger; the fifth entry is a refusal


# --- what the ledger records ---------------------------------------------------------------------


def test_entries_record_the_round_and_cumulative_epsilon(built):
    ledger = built.open()
    entries = ledger.entries()
    assert [(e.kind, e.run_id, e.round) for e in entries] == [
        ("round", "run-a", 1), ("round", "run-a", 2), ("round", "run-b", 1),
        ("round", "run-b", 2), ("refusal", "run-b", 3),
    ]  # fmt: skip
    first = entries[0]
    assert first.node == built.NODE and first.mechanism == "dp-sgd/poisson-gaussian"
    assert (first.noise_multiplier, first.sample_rate, first.steps) == built.ROUND
    assert (first.max_grad_norm, first.delta, first.dataset_size) == (1.0, built.DELTA, 500)
    assert first.history == (built.ROUND,) and first.time.endswith("+00:00")
    epsilons = [e.epsilon for e in entries if e.spends]
    assert epsilons == sorted(epsilons) and len(set(epsilons)) == SPENDING


def test_epsilon_is_opacus_over_the_whole_history_of_all_runs(built):
    ledger = built.open()
    history = ledger.history()
    assert history == [built.ROUND] * SPENDING  # the refusal spends nothing
    last = ledger.entries()[SPENDING - 1]
    grouped = [(*built.ROUND[:2], built.ROUND[2] * SPENDING)]  # what cumulative_epsilon evaluates
    assert last.epsilon == epsilon_from_history(grouped, built.DELTA, "prv")
    assert last.epsilon_rdp == epsilon_from_history(grouped, built.DELTA, "rdp")
    assert last.epsilon == pytest.approx(
        epsilon_from_history(history, built.DELTA, "prv"), rel=1e-9
    )
    assert last.epsilon_rdp == pytest.approx(
        epsilon_from_history(history, built.DELTA, "rdp"), rel=1e-9
    )
    assert ledger.epsilon(built.DELTA) == last.epsilon
    assert ledger.epsilon(built.DELTA, "rdp") == last.epsilon_rdp


def test_refusal_records_reason_and_projection_and_spends_nothing(built):
    refusal = built.open().entries()[-1]
    assert refusal.kind == "refusal" and not refusal.spends
    assert refusal.reason.startswith("budget") and refusal.projected_epsilon == 9.5
    assert refusal.epsilon is None and refusal.history == ()


def test_infinite_projection_is_stored_as_null(built):
    entry = built.open().append_refusal("run-c", 1, "no bound", float("inf"))
    assert entry.projected_epsilon is None


def test_head_matches_the_last_line_and_signer_pub_is_the_key(built):
    ledger = built.open()
    last = json.loads(built.lines()[-1])
    assert ledger.head() == ChainHead(last["hash"], SPENDING + 1)
    public = load_verify_key(built.directory / SIGNER_FILE)
    assert public.public_bytes_raw() == built.key.public_key().public_bytes_raw()


def test_new_ledger_is_empty_and_needs_a_node_name(tmp_path):
    ledger = Ledger(tmp_path / "fresh", generate_signing_key())
    assert ledger.entries() == [] and ledger.history() == []
    assert ledger.head() == ChainHead(ZERO_HASH, 0) and ledger.epsilon(1e-5) == 0.0
    with pytest.raises(LedgerError, match="needs the node name"):
        ledger.append_refusal("run", 1, "why", None)


# --- refusing bad input before anything is signed ------------------------------------------------


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"noise_multiplier": 0.0}, "noise_multiplier > 0"),
        ({"sample_rate": 1.5}, "sample_rate"),
        ({"steps": -1}, "steps"),
        ({"delta": 1.0}, "delta"),
        ({"dataset_size": 2.5}, "dataset_size"),
        ({"accountant_history_added": [(1.5, 0.02, 7)]}, "adds 7 steps, the round reports 10"),
        ({"accountant_history_added": [(1.5, 0.02)]}, "accountant history"),
        ({"run_id": ""}, "run_id"),
        ({"round": -1}, "round"),
    ],
)
def test_invalid_round_is_refused_and_nothing_written(built, change, match):
    before = built.file.read_bytes()
    noise, rate, steps = built.ROUND
    args = {
        "run_id": "run-c", "round": 1, "noise_multiplier": noise, "sample_rate": rate,
        "steps": steps, "max_grad_norm": 1.0, "delta": built.DELTA,
        "dataset_size": 10, "accountant_history_added": None, **change,
    }  # fmt: skip
    with pytest.raises(LedgerError, match=match):
        built.open().append_round(**args)
    assert built.file.read_bytes() == before


def test_numpy_values_from_training_code_are_accepted(built):
    entry = built.open().append_round(
        "run-np", np.int64(1), np.float64(1.5), 0.02, np.int64(10),
        1.0, built.DELTA, np.int64(500), [(np.float64(1.5), 0.02, np.int64(10))],
    )  # fmt: skip
    assert (entry.round, entry.steps, entry.dataset_size) == (1, 10, 500)
    assert verify_ledger(built.directory).ok


def test_two_handles_for_different_nodes_cannot_share_a_ledger(tmp_path):
    key = generate_signing_key()
    first = Ledger(tmp_path / "shared", key, node="node-0")
    second = Ledger(tmp_path / "shared", key, node="node-1")  # opened while still empty
    first.append_refusal("run", 1, "first", None)
    with pytest.raises(LedgerError, match="opened as node 'node-1'"):
        second.append_refusal("run", 1, "second", None)
    assert len(first.entries()) == 1


def test_refusal_needs_a_reason(built):
    with pytest.raises(LedgerError, match="reason"):
        built.open().append_refusal("run-c", 1, "  ", None)


# --- opening a ledger that cannot be trusted -----------------------------------------------------


def _tamper_number(built, index: int, rehash: bool = False) -> None:
    lines = built.lines()
    entry = json.loads(lines[index])
    entry["body"]["epsilon"] = 0.001
    if rehash:
        entry["hash"] = entry_hash(entry["seq"], entry["prev"], entry["body"], entry["signer"])
    lines[index] = json.dumps(entry) + "\n"
    built.write(lines)


def test_opening_a_tampered_ledger_is_refused_naming_the_entry(built):
    _tamper_number(built, 1)
    with pytest.raises(LedgerError, match=r"entry 1: bad-hash.*refusing"):
        built.open()


def test_opening_with_another_key_is_refused(built):
    with pytest.raises(LedgerError, match="created by key"):
        Ledger(built.directory, generate_signing_key())
    (built.directory / SIGNER_FILE).unlink()
    with pytest.raises(LedgerError, match="entry 0: bad-signature"):
        Ledger(built.directory, generate_signing_key())
    assert not (built.directory / SIGNER_FILE).exists()  # never re-created for the wrong key


def test_opening_as_another_node_is_refused(built):
    with pytest.raises(LedgerError, match="ledger of node 'node-0', opened as node 'node-1'"):
        built.open(node="node-1")


def test_a_torn_tail_is_named_and_blocks_appending(built):
    with built.file.open("a") as fh:
        fh.write(built.lines()[-1][:40])
    report = verify_ledger(built.directory)
    assert (report.first_break.index, report.first_break.kind) == (SPENDING + 1, "torn-line")
    assert len(report.entries) == SPENDING + 1  # everything before the tear still verifies
    with pytest.raises(LedgerError, match="torn-line"):
        built.open()


def test_a_crash_inside_the_atomic_write_loses_nothing(built, monkeypatch):
    ledger = built.open()
    before = built.file.read_bytes()
    monkeypatch.setattr(os, "replace", _power_cut)
    with pytest.raises(OSError, match="power cut"):
        ledger.append_refusal("run-c", 1, "crash test", None)
    monkeypatch.undo()
    assert built.file.read_bytes() == before and verify_ledger(built.directory).ok
    assert ledger.append_refusal("run-c", 1, "after the crash", None).seq == SPENDING + 1


def _power_cut(src, dst):
    raise OSError("power cut before rename")


# --- verify_ledger: each kind of tampering named -------------------------------------------------


def _kind(report) -> tuple[int, str]:
    assert not report.ok
    return report.first_break.index, report.first_break.kind


def _recorded_heads(built) -> list[dict]:
    """What the server would have recorded: the head after every entry."""
    return [
        {"hash": json.loads(line)["hash"], "count": i + 1} for i, line in enumerate(built.lines())
    ]


def test_sound_ledger_with_heads(built):
    report = verify_ledger(built.directory, built.key.public_key(), _recorded_heads(built))
    assert report.ok and report.heads_checked == SPENDING + 1 and report.node == built.NODE
    assert "5 of 5 entries sound" in report.summary()


def test_changed_number(built):
    _tamper_number(built, 2)
    assert _kind(verify_ledger(built.file)) == (2, "bad-hash")
    _tamper_number(built, 2, rehash=True)
    assert _kind(verify_ledger(built.file)) == (2, "bad-signature")


def test_removed_middle_entry(built):
    lines = built.lines()
    del lines[2]
    built.write(lines)
    assert _kind(verify_ledger(built.directory)) == (2, "broken-link")


def test_reordered_entries(built):
    lines = built.lines()
    lines[1], lines[2] = lines[2], lines[1]
    built.write(lines)
    assert _kind(verify_ledger(built.directory)) == (1, "broken-link")


def test_wrong_key(built):
    report = verify_ledger(built.directory, generate_signing_key().public_key())
    assert _kind(report) == (0, "bad-signature")
    assert report.key_source == "given key"


def test_cut_tail_is_caught_only_with_the_server_heads(built):
    heads = _recorded_heads(built)
    built.write(built.lines()[:3])
    assert verify_ledger(built.directory).ok  # a clean cut is invisible to the chain itself
    report = verify_ledger(built.directory, heads=heads)
    assert _kind(report) == (3, "cut-tail")
    assert "recorded 4 entries" in report.first_break.detail


def test_cut_and_regrown_ledger_is_rewritten(built):
    heads = _recorded_heads(built)
    built.write(built.lines()[:2])
    ledger = built.open()
    ledger.append_refusal("run-b", 1, "pretend round 1 of run-b never happened", None)
    assert verify_ledger(built.directory).ok
    report = verify_ledger(built.directory, heads=heads)
    assert _kind(report) == (2, "rewritten")


def test_verify_with_a_key_file(built, tmp_path):
    other = save_signing_key(generate_signing_key(), tmp_path / "other.ed25519")
    report = verify_ledger(built.directory, f"{other}.pub")
    assert _kind(report) == (0, "bad-signature") and report.key_source.endswith("other.ed25519.pub")


@pytest.mark.parametrize(
    ("heads", "match"),
    [([{"hash": "ab", "count": 1}], "64 hex"), ([{"count": 1}], "expected"), ([3], "expected")],
)
def test_malformed_heads_are_bad_input(built, heads, match):
    with pytest.raises(LedgerError, match=match):
        verify_ledger(built.directory, heads=heads)


def test_missing_ledger_or_signer_pub_is_bad_input(built, tmp_path):
    with pytest.raises(LedgerError, match="no such ledger file"):
        verify_ledger(tmp_path / "nowhere")
    (built.directory / SIGNER_FILE).unlink()
    with pytest.raises(LedgerError, match="--key"):
        verify_ledger(built.directory)


def test_server_heads_reads_metrics_for_one_node(tmp_path):
    head0 = {"hash": "a" * 64, "count": 1}
    rows = [
        {"round": 1, "clients": [{"node": "node-0", "ledger_head": head0},
                                 {"node": "node-1", "ledger_head": dict(head0, count=2)}]},
        {"round": 2, "clients": [{"node": "node-0", "status": "error", "ledger_head": None}]},
    ]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert server_heads(tmp_path, "node-0") == [ChainHead("a" * 64, 1)]
    (tmp_path / "metrics.jsonl").write_text("{broken\n")
    with pytest.raises(LedgerError, match=r"metrics\.jsonl:1"):
        server_heads(tmp_path, "node-0")


# --- restarts: each Flower message is a new process ----------------------------------------------

CLIENT = textwrap.dedent(
    """
    import sys
    from fedmodel.crypto.keys import load_signing_key
    from fedmodel.privacy.ledger import Ledger
    directory, key_file, run_id, first, last = sys.argv[1:6]
    ledger = Ledger(directory, load_signing_key(key_file), node="node-0")
    for r in range(int(first), int(last) + 1):
        entry = ledger.append_round(run_id, r, 1.2, 0.05, 8, 1.0, 1e-5, 200, [(1.2, 0.05, 8)])
        print(entry.seq, repr(entry.epsilon))
    """
)


def test_two_processes_in_turn_continue_the_same_epsilon(tmp_path):
    key_file = save_signing_key(generate_signing_key(), tmp_path / "node-0.ed25519")
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    directory = tmp_path / "ledger"
    for run_id, first, last in (("run-a", 1, 2), ("run-b", 1, 1)):
        args = [str(script), str(directory), str(key_file), run_id, str(first), str(last)]
        done = subprocess.run(
            [sys.executable, *args], capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stderr
    report = verify_ledger(directory)
    assert report.ok and [e.seq for e in report.entries] == [0, 1, 2]
    combined = [(1.2, 0.05, 8)] * 3
    assert report.entries[-1].epsilon == epsilon_from_history([(1.2, 0.05, 24)], 1e-5, "prv")
    assert report.entries[-1].epsilon == pytest.approx(
        epsilon_from_history(combined, 1e-5), rel=1e-9
    )
    assert report.entries[0].epsilon < report.entries[1].epsilon < report.entries[2].epsilon


def test_a_reopened_ledger_keeps_counting(built):
    built.append_rounds(built.open(), "run-c", range(1, 2))
    reopened = built.open()
    assert reopened.history() == [built.ROUND] * (SPENDING + 1)
    assert reopened.entries()[-1].epsilon == epsilon_from_history(
        [(*built.ROUND[:2], built.ROUND[2] * (SPENDING + 1))], built.DELTA
    )
