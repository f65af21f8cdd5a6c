"""Key files: written 0600, never silently replaced, and every bad file refused in one line."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from typer.testing import CliRunner

from fedmodel.cli.keys_cmd import app as keys_app
from fedmodel.crypto.keys import (
    KeyFileError,
    fingerprint,
    generate_auth_key,
    generate_node_identity,
    generate_signing_key,
    load_auth_key,
    load_auth_public_key,
    load_signing_key,
    load_verify_key,
    public_path,
    save_signing_key,
)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _one_line_error(call, *args, match: str) -> str:
    with pytest.raises(KeyFileError, match=match) as info:
        call(*args)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture
def identity(tmp_path):
    return generate_node_identity("node-0", tmp_path / "keys")


def test_node_identity_writes_four_files_with_private_mode_0600(identity):
    assert _mode(identity.signing_key) == 0o600
    assert _mode(identity.auth_key) == 0o600
    assert _mode(identity.signing_public) == 0o644
    assert _mode(identity.auth_public) == 0o644
    assert identity.signing_key.name == "node-0.ed25519"
    assert identity.signing_public.name == "node-0.ed25519.pub"
    assert identity.auth_key.name == "node-0.auth"
    assert identity.auth_public.name == "node-0.auth.pub"


def test_keys_load_back_with_the_expected_formats(identity):
    signing = load_signing_key(identity.signing_key)
    auth = load_auth_key(identity.auth_key)
    assert isinstance(signing, ed25519.Ed25519PrivateKey)
    assert isinstance(auth, ec.EllipticCurvePrivateKey) and auth.curve.name == "secp384r1"
    assert identity.signing_key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert identity.signing_public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert identity.auth_key.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert identity.auth_public.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert fingerprint(load_verify_key(identity.signing_public)) == identity.signing_fingerprint
    assert fingerprint(load_auth_public_key(identity.auth_public)) == identity.auth_fingerprint


def test_fingerprint_is_sha256_of_raw_or_der_public_bytes():
    signing, auth = generate_signing_key(), generate_auth_key()
    raw = signing.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    der = auth.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert fingerprint(signing.public_key()) == hashlib.sha256(raw).hexdigest()
    assert fingerprint(signing) == fingerprint(signing.public_key())
    assert fingerprint(auth.public_key()) == hashlib.sha256(der).hexdigest()


def test_refuses_to_overwrite_without_force(tmp_path, identity):
    before = identity.signing_key.read_bytes()
    _one_line_error(generate_node_identity, "node-0", tmp_path / "keys", match="already exists")
    assert identity.signing_key.read_bytes() == before
    _one_line_error(save_signing_key, generate_signing_key(), identity.signing_key, match="--force")
    replaced = generate_node_identity("node-0", tmp_path / "keys", force=True)
    assert replaced.signing_fingerprint != identity.signing_fingerprint
    assert _mode(replaced.signing_key) == 0o600


def test_refusal_leaves_no_half_identity(tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "node-1.auth.pub").write_text("someone else's key\n")
    _one_line_error(generate_node_identity, "node-1", keys, match="node-1.auth.pub")
    assert sorted(p.name for p in keys.iterdir()) == ["node-1.auth.pub"]


def test_a_lone_public_file_blocks_saving_its_private_key(tmp_path):
    path = tmp_path / "signer.ed25519"
    public_path(path).write_text("x")
    _one_line_error(save_signing_key, generate_signing_key(), path, match="already exists")
    assert not path.exists()


def test_wrong_key_type_is_named(identity):
    message = _one_line_error(load_signing_key, identity.auth_key, match="expected an Ed25519")
    assert "EC key (secp384r1)" in message
    _one_line_error(load_auth_key, identity.signing_key, match="expected an EC")
    _one_line_error(load_verify_key, identity.auth_public, match="expected an Ed25519 public")


def test_garbage_file_is_not_a_key(tmp_path):
    path = tmp_path / "junk.ed25519"
    path.write_bytes(b"\x00\x01 definitely not a key\n")
    path.chmod(0o600)
    _one_line_error(load_signing_key, path, match="not a private key in PEM or OpenSSH format")
    _one_line_error(load_verify_key, path, match="not a public key")


def test_public_key_given_where_private_expected_gets_a_hint(identity):
    _one_line_error(load_signing_key, identity.signing_public, match="looks like a public key")


def test_missing_file_and_directory(tmp_path):
    _one_line_error(load_signing_key, tmp_path / "absent.ed25519", match="no such key file")
    _one_line_error(load_signing_key, tmp_path, match="not a regular file")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_private_key_readable_by_others_is_refused(identity, mode):
    identity.signing_key.chmod(mode)
    message = _one_line_error(load_signing_key, identity.signing_key, match="too open")
    assert f"chmod 600 {identity.signing_key}" in message
    assert f"{mode:04o}" in message
    identity.auth_key.chmod(mode)
    _one_line_error(load_auth_key, identity.auth_key, match="chmod 600")


def test_passphrase_protected_key_is_refused(tmp_path):
    path = tmp_path / "locked.ed25519"
    pem = generate_signing_key().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    path.write_bytes(pem)
    path.chmod(0o600)
    _one_line_error(load_signing_key, path, match="passphrase-protected")


def test_other_curve_is_refused(tmp_path):
    path = tmp_path / "p256.auth"
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    _one_line_error(load_auth_key, path, match="P-384")


@pytest.mark.parametrize("name", ["", "../escape", "a/b", ".hidden", "x" * 65])
def test_unsafe_node_names_are_refused(tmp_path, name):
    _one_line_error(generate_node_identity, name, tmp_path, match="node name")


def test_cli_keys_node(tmp_path):
    runner = CliRunner()
    first = runner.invoke(keys_app, ["node", "hospital-a", str(tmp_path)])
    assert first.exit_code == 0, first.output
    assert "hospital-a.ed25519" in first.output and "sha256" in first.output
    again = runner.invoke(keys_app, ["node", "hospital-a", str(tmp_path)])
    assert again.exit_code == 2
    assert again.stderr.count("\n") == 1 and "already exists" in again.stderr
    forced = runner.invoke(keys_app, ["node", "hospital-a", str(tmp_path), "--force"])
    assert forced.exit_code == 0, forced.output


def test_exchange_key_round_trip_and_refusals(tmp_path, identity):
    """The ServerApp's X25519 key: the same file rules as every other private key."""
    from cryptography.hazmat.primitives.asymmetric import x25519

    from fedmodel.crypto.keys import load_exchange_key, save_exchange_key

    key = x25519.X25519PrivateKey.generate()
    path = save_exchange_key(key, tmp_path / "server.x25519")
    assert _mode(path) == 0o600 and public_path(path).is_file()
    assert load_exchange_key(path).public_key().public_bytes_raw() == (
        key.public_key().public_bytes_raw()
    )
    _one_line_error(save_exchange_key, key, path, match="already exists")
    _one_line_error(load_exchange_key, identity.signing_key, match="expected an X25519")
    path.chmod(0o644)
    _one_line_error(load_exchange_key, path, match="too open")
