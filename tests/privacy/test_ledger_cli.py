"""``fedmodel ledger verify|show``: 0 sound, 1 broken (first broken entry named), 2 bad input."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fedmodel.cli.ledger_cmd import app
from fedmodel.crypto.keys import generate_signing_key, save_public_key
from fedmodel.privacy.ledger import SIGNER_FILE

runner = CliRunner()


def _invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def _run_dir(tmp_path, built, node: str | None = None):
    """A run folder whose server recorded this node's head after every entry."""
    run = tmp_path / "run"
    run.mkdir()
    rows = []
    for i, line in enumerate(built.lines()):
        head = {"hash": json.loads(line)["hash"], "count": i + 1}
        client = {
            "node": node or built.NODE,
            "partition_id": 0,
            "status": "ok",
            "ledger_head": head,
        }
        rows.append({"round": i + 1, "server": {}, "clients": [client]})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def _assert_one_line_error(result, match: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and match in result.stderr


def test_verify_sound_ledger(built, tmp_path):
    result = _invoke("verify", built.directory, "--heads", _run_dir(tmp_path, built))
    assert result.exit_code == 0, result.output
    assert "5 of 5 entries sound, 5 server heads checked" in result.stdout
    assert "pass --key" in result.stdout  # reminds that signer.pub is not independent


def test_verify_with_the_registered_key(built, tmp_path):
    key = save_public_key(built.key.public_key(), tmp_path / "node-0.ed25519.pub")
    result = _invoke("verify", built.file, "--key", key)
    assert result.exit_code == 0, result.output
    assert "pass --key" not in result.stdout


def test_verify_names_the_first_broken_entry(built):
    lines = built.lines()
    del lines[1]
    built.write(lines)
    result = _invoke("verify", built.directory)
    assert result.exit_code == 1
    assert "BROKEN at entry 1: broken-link" in result.stdout


def test_verify_catches_a_cut_tail_with_heads(built, tmp_path):
    run = _run_dir(tmp_path, built)
    built.write(built.lines()[:2])
    assert _invoke("verify", built.directory).exit_code == 0
    result = _invoke("verify", built.directory, "--heads", run)
    assert result.exit_code == 1
    assert "entry 2: cut-tail" in result.stdout


def test_verify_with_a_wrong_key(built, tmp_path):
    key = save_public_key(generate_signing_key().public_key(), tmp_path / "other.pub")
    result = _invoke("verify", built.directory, "--key", key)
    assert result.exit_code == 1
    assert "entry 0: bad-signature" in result.stdout


@pytest.mark.parametrize("case", ["missing-ledger", "garbage-key", "no-metrics", "other-node"])
def test_bad_input_is_one_line_and_exit_2(built, tmp_path, case):
    if case == "missing-ledger":
        result = _invoke("verify", tmp_path / "absent")
        match = "no such ledger file"
    elif case == "garbage-key":
        (tmp_path / "junk.pub").write_text("not a key")
        result = _invoke("verify", built.directory, "--key", tmp_path / "junk.pub")
        match = "not a public key"
    elif case == "no-metrics":
        result = _invoke("verify", built.directory, "--heads", tmp_path)
        match = "metrics.jsonl: no such file"
    else:
        run = _run_dir(tmp_path, built, node="node-7")
        result = _invoke("verify", built.directory, "--heads", run)
        match = "no ledger heads recorded for node 'node-0'"
    _assert_one_line_error(result, match)


def test_verify_without_signer_pub_asks_for_key(built):
    (built.directory / SIGNER_FILE).unlink()
    _assert_one_line_error(_invoke("verify", built.directory), "--key")


def test_show_lists_entries_with_epsilon(built):
    result = _invoke("show", built.directory)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "eps_prv" in lines[0] and "eps_rdp" in lines[0]
    rows = lines[1:-1]
    assert len(rows) == 5
    first = built.open().entries()[0]
    assert f"{first.epsilon:.4f}" in rows[0] and "run-a" in rows[0]
    assert "refused: budget" in rows[-1]
    assert "5 of 5 entries sound" in lines[-1]


def test_show_marks_a_broken_ledger(built):
    with built.file.open("a") as fh:
        fh.write('{"seq": 5')
    result = _invoke("show", built.directory)
    assert result.exit_code == 1
    assert "entry 5: torn-line" in result.stdout
