"""A small signed ledger built once per session and copied per test, so tampering stays local."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from fedmodel.crypto.keys import generate_signing_key
from fedmodel.privacy.ledger import LEDGER_FILE, Ledger


@dataclass
class LedgerFixture:
    """A ledger directory with its key, the parameters it was built with, and file helpers."""

    directory: Path
    key: ed25519.Ed25519PrivateKey
    NODE = "node-0"
    ROUND = (1.5, 0.02, 10)  # (noise_multiplier, sample_rate, steps) of every built round
    DELTA = 1e-5

    @property
    def file(self) -> Path:
        return self.directory / LEDGER_FILE

    def lines(self) -> list[str]:
        return self.file.read_text().splitlines(keepends=True)

    def write(self, lines: list[str]) -> None:
        self.file.write_text("".join(lines))

    def open(self, **kwargs) -> Ledger:
        return Ledger(self.directory, self.key, **kwargs)

    def append_rounds(self, ledger: Ledger, run_id: str, rounds: range) -> None:
        for r in rounds:
            ledger.append_round(
                run_id, r, *self.ROUND, max_grad_norm=1.0, delta=self.DELTA, dataset_size=500,
                accountant_history_added=[self.ROUND],
            )  # fmt: skip


@pytest.fixture(scope="session")
def _built(tmp_path_factory) -> LedgerFixture:
    """Five entries: run-a rounds 1-2, run-b rounds 1-2, then a refusal (run-b round 3)."""
    fixture = LedgerFixture(tmp_path_factory.mktemp("ledger") / "node-0", generate_signing_key())
    ledger = fixture.open(node=fixture.NODE)
    fixture.append_rounds(ledger, "run-a", range(1, 3))
    fixture.append_rounds(ledger, "run-b", range(1, 3))
    ledger.append_refusal("run-b", 3, "budget: projected epsilon over the cap", 9.5)
    return fixture


@pytest.fixture
def built(_built, tmp_path) -> LedgerFixture:
    target = tmp_path / "node-0"
    shutil.copytree(_built.directory, target)
    return LedgerFixture(target, _built.key)
