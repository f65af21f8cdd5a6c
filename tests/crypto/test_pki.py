"""The CA and server certificate must work for a real TLS client, not just parse.

The handshake tests use Python's ``ssl`` with ``VERIFY_X509_STRICT`` (the default from Python
3.13 on), so a certificate that only lax verifiers accept fails here first.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID
from typer.testing import CliRunner

from fedmodel.cli.pki_cmd import app
from fedmodel.crypto.pki import PKIError, init_ca, issue_server_cert

LOOPBACK = {"hosts": ["localhost"], "ips": ["127.0.0.1", "::1"]}


@pytest.fixture
def pki_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "pki"
    init_ca(folder)
    issue_server_cert(folder, **LOOPBACK, days=30)
    return folder


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _serve_once(folder: Path) -> tuple[int, threading.Thread]:
    """A one-shot TLS server on 127.0.0.1 presenting server.pem; returns its port."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(folder / "server.pem", folder / "server.key")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def serve() -> None:
        with listener:
            try:
                conn, _ = listener.accept()
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"ok")
            except (OSError, ssl.SSLError):
                pass  # the client rejected us; the client side asserts on that

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread


def _handshake(folder: Path, cafile: Path, server_hostname: str) -> bytes:
    port, thread = _serve_once(folder)
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
        ):
            return tls.recv(2)
    finally:
        thread.join(timeout=10)


# --- certificate contents --------------------------------------------------------------------


def test_ca_is_ec_ca_with_cert_sign(pki_dir: Path) -> None:
    ca = _cert(pki_dir / "ca.crt")
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp256r1"
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign


def test_server_cert_chains_to_ca_with_sans_and_eku(pki_dir: Path) -> None:
    ca, leaf = _cert(pki_dir / "ca.crt"), _cert(pki_dir / "server.pem")
    leaf.verify_directly_issued_by(ca)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_server_cert_does_not_outlive_ca(tmp_path: Path) -> None:
    init_ca(tmp_path, days=10)
    issue_server_cert(tmp_path, ["localhost"], [], days=365)
    ca, leaf = _cert(tmp_path / "ca.crt"), _cert(tmp_path / "server.pem")
    assert leaf.not_valid_after_utc <= ca.not_valid_after_utc


def test_private_keys_are_owner_only(pki_dir: Path) -> None:
    for name in ("ca.key", "server.key"):
        assert stat.S_IMODE((pki_dir / name).stat().st_mode) == 0o600


# --- real TLS handshakes ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1", "::1"])
def test_tls_handshake_succeeds_for_every_san(pki_dir: Path, name: str) -> None:
    assert _handshake(pki_dir, pki_dir / "ca.crt", name) == b"ok"


def test_tls_handshake_fails_against_another_ca(pki_dir: Path, tmp_path: Path) -> None:
    other = init_ca(tmp_path / "other").cert
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        _handshake(pki_dir, other, "localhost")


def test_tls_handshake_fails_for_name_outside_sans(pki_dir: Path) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        _handshake(pki_dir, pki_dir / "ca.crt", "10.0.0.1")


# --- refusals --------------------------------------------------------------------------------


def test_never_overwrites_without_force(pki_dir: Path) -> None:
    before = (pki_dir / "ca.key").read_bytes(), (pki_dir / "server.key").read_bytes()
    with pytest.raises(PKIError, match="already exist"):
        init_ca(pki_dir)
    with pytest.raises(PKIError, match="already exist"):
        issue_server_cert(pki_dir, ["localhost"], [])
    assert ((pki_dir / "ca.key").read_bytes(), (pki_dir / "server.key").read_bytes()) == before
    issue_server_cert(pki_dir, ["localhost"], [], force=True)
    assert (pki_dir / "server.key").read_bytes() != before[1]


def test_missing_ca(tmp_path: Path) -> None:
    with pytest.raises(PKIError, match="no CA here"):
        issue_server_cert(tmp_path, ["localhost"], [])


def test_wrong_ca_key_type(tmp_path: Path) -> None:
    init_ca(tmp_path)
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (tmp_path / "ca.key").write_bytes(pem)
    with pytest.raises(PKIError, match="wrong key type Ed25519PrivateKey"):
        issue_server_cert(tmp_path, ["localhost"], [])


def test_ca_key_cert_mismatch(tmp_path: Path) -> None:
    init_ca(tmp_path / "a")
    init_ca(tmp_path / "b")
    (tmp_path / "a" / "ca.key").write_bytes((tmp_path / "b" / "ca.key").read_bytes())
    with pytest.raises(PKIError, match="does not belong"):
        issue_server_cert(tmp_path / "a", ["localhost"], [])


@pytest.mark.parametrize(
    ("hosts", "ips", "message"),
    [
        ([], ["127.0.0.300"], "bad IP address"),
        ([], ["localhost"], "bad IP address"),
        (["127.0.0.1"], [], "is an IP address"),
        (["bad host"], [], "bad host name"),
        ([], [], "at least one"),
    ],
)
def test_bad_names(tmp_path: Path, hosts: list[str], ips: list[str], message: str) -> None:
    init_ca(tmp_path)
    with pytest.raises(PKIError, match=message):
        issue_server_cert(tmp_path, hosts, ips)
    assert not (tmp_path / "server.pem").exists()


# --- CLI -------------------------------------------------------------------------------------


def test_cli_init_and_server_cert(tmp_path: Path) -> None:
    runner = CliRunner()
    folder = tmp_path / "pki"
    assert runner.invoke(app, ["init", str(folder)]).exit_code == 0
    result = runner.invoke(
        app, ["server-cert", str(folder), "--host", "localhost", "--ip", "127.0.0.1"]
    )
    assert result.exit_code == 0, result.output
    sans = _cert(folder / "server.pem").extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert len(sans.value) == 2


def test_cli_defaults_to_loopback(tmp_path: Path) -> None:
    runner = CliRunner()
    runner.invoke(app, ["init", str(tmp_path)])
    assert runner.invoke(app, ["server-cert", str(tmp_path)]).exit_code == 0
    sans = _cert(tmp_path / "server.pem").extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert len(sans.value) == 3


def test_cli_error_is_one_line_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["server-cert", str(tmp_path), "--ip", "1.2.3"])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.output
