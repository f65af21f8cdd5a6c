"""The audit log: a signed chain of the server's decisions; ``fedmodel audit verify`` names the
first broken entry (exit 1), and bad input is one line with exit 2."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from fedmodel.cli.main import app as cli
from server.audit import AUDIT_FILE, AuditError, AuditLog, verify_audit
from server.sealing import ensure_server_keys

ROWS = [
    {"node": "node-0", "status": "ok", "reason": None, "message_id": "ab" * 16, "num_examples": 9},
    {"node": "node-1", "status": "rejected", "reason": "tampered: fails its GCM tag"},
    {"node": "node-2", "status": "refused", "reason": "budget", "projected_epsilon": float("inf")},
    {"node": "flower-7", "status": "error", "reason": "node lost power"},
]


@pytest.fixture
def run_dir(tmp_path):
    """A run folder with its server keys and a short, genuine audit log."""
    keys = ensure_server_keys(tmp_path / "server-keys")
    log = AuditLog(tmp_path, keys.signing, "run-x")
    log.run_started(config_hash="c" * 64, code_version="0.1.0", engine="simulation",
                    transport={"sealed_updates": True}, strategy={"name": "fedavg"})  # fmt: skip
    log.client_rows(1, ROWS)
    log.round_finished(1, {"accuracy": 0.9, "loss": float("nan")}, ROWS)
    checkpoint = tmp_path / "checkpoints" / "round-0001.safetensors"
    log.checkpoint(1, checkpoint, "f" * 64)
    log.run_finished("d" * 64)
    return tmp_path


def test_genuine_log_verifies_with_counts(run_dir):
    report = verify_audit(run_dir)
    assert report.ok and report.total == 8
    assert report.counts == {
        "accepted": 1, "rejected": 1, "refused": 1, "errors": 1, "rounds": 1, "checkpoints": 1,
    }  # fmt: skip
    bodies = [e.body for e in report.entries]
    assert bodies[2]["reason"].startswith("tampered") and bodies[1]["message_id"] == "ab" * 16
    assert bodies[5]["server"]["loss"] == "nan"  # the chain stores no NaN: JSON has none
    assert bodies[6]["path"] == "checkpoints/round-0001.safetensors"
    result = CliRunner().invoke(cli, ["audit", "verify", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "8 entries, sound" in result.output and "accepted 1, rejected 1" in result.output


def edit_line(path, index, change):
    lines = path.read_text().splitlines()
    entry = json.loads(lines[index])
    change(entry["body"])
    lines[index] = json.dumps(entry, separators=(",", ":"))
    path.write_text("\n".join(lines) + "\n")


def test_edited_entry_is_named(run_dir):
    # turn the rejection of node-1's update into an acceptance, after the fact
    edit_line(run_dir / AUDIT_FILE, 2, lambda body: body.update(outcome="accepted", reason=None))
    result = CliRunner().invoke(cli, ["audit", "verify", str(run_dir / AUDIT_FILE)])
    assert result.exit_code == 1, result.output
    assert "BROKEN at entry 2: bad-hash" in result.output
    assert "2 of 8 entries verified" in result.output


def test_removed_entry_and_foreign_key_are_caught(run_dir):
    path = run_dir / AUDIT_FILE
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:3] + lines[4:]) + "\n")  # drop the refusal
    assert verify_audit(run_dir).first_break.describe().startswith("entry 3: broken-link")

    other = Ed25519PrivateKey.generate().public_key()
    assert verify_audit(run_dir, other).first_break.kind == "bad-signature"


def test_bad_input_is_one_line_exit_2(tmp_path, run_dir):
    result = CliRunner().invoke(cli, ["audit", "verify", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "no such audit log" in result.output
    (run_dir / "server-keys" / "server.ed25519.pub").unlink()
    with pytest.raises(AuditError, match="pass the server's published verify key"):
        verify_audit(run_dir)
    result = CliRunner().invoke(cli, ["audit", "verify", str(run_dir), "--key", str(run_dir)])
    assert result.exit_code == 2 and "Traceback" not in result.output
