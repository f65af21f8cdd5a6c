"""The server's copy of a site's ledger, grown from what the site's replies carry.

Real ledgers (the ``Ledger`` class, real Ed25519 keys, spends through the one door) and the
server's real ``LedgerCopies``: a suffix that chains onto the copy is kept verbatim, and a site
that rewrites its history, leaves a gap, or signs with another key is refused with the reason.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fedmodel.config import PrivacyBudget
from fedmodel.crypto.chain import ChainHead
from fedmodel.crypto.keys import generate_signing_key
from fedmodel.crypto.seal import SealError
from fedmodel.node_config import SitePolicy
from fedmodel.privacy.highwater import LedgerRollback
from fedmodel.privacy.ledger import LEDGER_FILE, Ledger
from fedmodel.privacy.ledger_copy import LedgerSuffix, suffix_for
from fedmodel.privacy.spend import SiteRules, SpendPlan, commit, reserve
from server.ledger_copies import LedgerCopies

NODE = "hospital-a"
RULES = SiteRules(
    cap=PrivacyBudget(epsilon=8.0, delta=1e-5), policy=SitePolicy().model_dump(mode="json")
)


def _spend(ledger: Ledger, rnd: int, run_id: str = "run-1") -> ChainHead:
    """One round through the spend door (policy entry first, then the round), as a node does;
    returns the head its reply reports, then commits as the node does after sending."""
    plan = SpendPlan(
        run_id=run_id, round=rnd, history=((1.1, 0.05, 20),), releases=("model-update",),
        noise_multiplier=1.1, sample_rate=0.05, steps=20, max_grad_norm=1.0, delta=1e-5,
        dataset_size=1280, planned_rounds=5,
    )  # fmt: skip
    reserved = reserve(ledger, plan, RULES, seed_secret=b"s" * 32)
    head = ChainHead(reserved.entry.hash, reserved.entry.seq + 1)
    commit(ledger, reserved, "ab" * 32)
    return head


@pytest.fixture
def site(tmp_path):
    key = generate_signing_key()
    return key, Ledger(tmp_path / "site" / "ledger", key, node=NODE)


@pytest.fixture
def copies(tmp_path, site):
    key, _ = site
    return LedgerCopies(tmp_path / "run", {NODE: key.public_key()})


def _reply(ledger: Ledger, copies: LedgerCopies, reported: ChainHead) -> None:
    """What a reply carries and what the server does with it."""
    held = copies.held(NODE)
    suffix = suffix_for(ledger, held if held.count else None, reported.count)
    copies.extend(NODE, suffix.encode(), reported)


def test_replies_grow_a_verbatim_copy_holding_the_signed_cap(site, copies):
    _, ledger = site
    for rnd in (1, 2, 3):
        _reply(ledger, copies, _spend(ledger, rnd))
    copy = copies.folder(NODE) / LEDGER_FILE
    site_lines = ledger.path.read_text().splitlines()
    held = copy.read_text().splitlines()
    assert held == site_lines[: len(held)]  # the site's own lines, never re-signed
    assert len(held) == len(site_lines) - 1  # all but the last commit, written after the reply
    assert '"kind":"policy"' in held[0] and '"cap_epsilon":8.0' in held[0]


def test_a_rewritten_history_is_refused(site, copies, tmp_path):
    """The attack: after the server holds two rounds, the site restores an older ledger and
    writes a different history on it, then answers as if nothing happened."""
    key, ledger = site
    _reply(ledger, copies, _spend(ledger, 1))
    backup = tmp_path / "backup"
    shutil.copytree(ledger.directory, backup)
    _reply(ledger, copies, _spend(ledger, 2))
    held = copies.held(NODE)
    shutil.rmtree(ledger.directory)
    shutil.copytree(backup, ledger.directory)
    rewritten = Ledger(ledger.directory, key, node=NODE)
    reported = _spend(rewritten, 2, run_id="run-rewritten")
    lines = rewritten.signed_lines(0, reported.count)
    # the site sends from the start (as if the server had forgotten): the overlap differs
    with pytest.raises(SealError, match=r"ledger-history.*rewritten") as from_start:
        copies.extend(NODE, LedgerSuffix(0, tuple(lines)).encode(), reported)
    # or only what follows the head the server named: it does not link onto it
    after = LedgerSuffix(held.count, tuple(lines[held.count :]))
    with pytest.raises(SealError, match="ledger-history") as after_head:
        copies.extend(NODE, after.encode(), reported)
    assert from_start.value.reason == after_head.value.reason == "ledger-history"
    assert copies.held(NODE) == held  # the copy is untouched
    # and the node itself stops when the server names a head its ledger no longer holds
    with pytest.raises(LedgerRollback):
        suffix_for(rewritten, held, reported.count)


def test_a_gap_another_key_and_a_wrong_head_are_refused(site, copies):
    _, ledger = site
    first = _spend(ledger, 1)
    second = _spend(ledger, 2)
    lines = ledger.signed_lines(0, second.count)
    gap = LedgerSuffix(first.count, tuple(lines[first.count :]))
    with pytest.raises(SealError, match="start after entry 2, the run folder holds 0"):
        copies.extend(NODE, gap.encode(), second)
    with pytest.raises(SealError, match="end at entry 4, the reply reports 2"):
        copies.extend(NODE, LedgerSuffix(0, tuple(lines)).encode(), first)
    other = Ledger(ledger.directory.parent / "other", generate_signing_key(), node=NODE)
    forged = _spend(other, 1)
    with pytest.raises(SealError, match="ledger-history"):
        copies.extend(NODE, LedgerSuffix(0, tuple(other.signed_lines(0, 2))).encode(), forged)
    with pytest.raises(SealError, match="no ledger entries"):
        copies.extend(NODE, None, first)
    assert copies.held(NODE).count == 0


def test_unregistered_and_unsafe_names_get_no_copy(copies):
    for name in ("stranger", "../escape"):
        with pytest.raises(SealError, match="unknown-signer"):
            copies.folder(name)


def test_a_malformed_suffix_is_one_clear_reason(copies, site):
    _, ledger = site
    head = _spend(ledger, 1)
    for data in (b"not json", b'{"after": -1, "lines": []}', b'{"after": 0, "lines": [1]}'):
        with pytest.raises(SealError, match=r"\(ledger-history\): the reply.s ledger"):
            copies.extend(NODE, data, head)


def test_resume_keeps_the_copy(site, copies, tmp_path: Path):
    _, ledger = site
    _reply(ledger, copies, _spend(ledger, 1))
    again = LedgerCopies(copies.run_dir, copies.signers)  # a resumed ServerApp
    assert again.held(NODE) == copies.held(NODE)
    second = _spend(ledger, 2)
    again.extend(
        NODE, LedgerSuffix(0, tuple(ledger.signed_lines(0, second.count))).encode(), second
    )
    assert again.held(NODE) == second
