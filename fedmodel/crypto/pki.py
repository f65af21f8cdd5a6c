"""A minimal private PKI for the SuperLink's TLS port: one EC CA and the server certs it signs.

Flower 1.41 terminates TLS on the SuperLink (``--ssl-certfile/--ssl-keyfile/--ssl-ca-certfile``)
and SuperNodes verify it with ``--root-certificates ca.crt``; TLS there is server-auth only (node
identity comes from SuperNode auth keys). A deployment therefore needs exactly two artefacts:
a CA that every node pins, and a server certificate whose SANs match the address the nodes dial
(for loopback ``DNS:localhost, IP:127.0.0.1, IP:::1``) with EKU serverAuth. This module makes
both and refuses to guess: it never overwrites a key without ``force`` and checks that the CA key
and certificate belong together before signing anything with them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedmodel.errors import FedmodelError
from fedmodel.io import atomic_write_bytes

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
DEFAULT_CA_DAYS = 3650
# 397 days is the CA/Browser Forum ceiling for leaf certificates; clients that enforce it exist.
DEFAULT_SERVER_DAYS = 397
LOOPBACK_HOSTS = ("localhost",)
LOOPBACK_IPS = ("127.0.0.1", "::1")
_CURVES = (ec.SECP256R1, ec.SECP384R1)
_CLOCK_SKEW = dt.timedelta(minutes=5)  # nodes whose clocks lag a little must still accept the cert
_KEY_MODE = 0o600
_CERT_MODE = 0o644
_DNS_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_DNS_NAME = re.compile(rf"^(\*\.)?({_DNS_LABEL}\.)*{_DNS_LABEL}$")


class PKIError(FedmodelError):
    """A CA or certificate file is missing, mismatched, of the wrong type, or would be clobbered."""


@dataclass(frozen=True)
class IssuedFiles:
    """Where a certificate and its private key were written."""

    cert: Path
    key: Path


def init_ca(
    directory: str | os.PathLike[str],
    name: str = "fedmodel CA",
    days: int = DEFAULT_CA_DAYS,
    force: bool = False,
) -> IssuedFiles:
    """Create ``ca.crt`` and ``ca.key`` (0600) in ``directory``: a self-signed EC P-256 CA.

    Replacing a CA silently would orphan every certificate it signed, hence ``force``.
    """
    folder = _prepare_dir(directory)
    _validate_days(days)
    if not name.strip():
        raise PKIError("CA name must not be empty")
    cert_path, key_path = folder / CA_CERT, folder / CA_KEY
    _refuse_overwrite((cert_path, key_path), force)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedmodel"),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    _write_pair(cert, key, cert_path, key_path)
    return IssuedFiles(cert=cert_path, key=key_path)


def issue_server_cert(
    directory: str | os.PathLike[str],
    hosts: list[str],
    ips: list[str],
    days: int = DEFAULT_SERVER_DAYS,
    force: bool = False,
) -> IssuedFiles:
    """Sign ``server.pem`` + ``server.key`` (0600) with the CA in ``directory``.

    Every host becomes a DNS SAN and every address an IP SAN: TLS clients match the name they
    dialled against SANs only (the CN is ignored), and an IP needs an IP SAN, not a DNS one.
    The validity is clipped to the CA's, because a leaf outliving its CA cannot be verified.
    """
    folder = _existing_dir(directory)
    _validate_days(days)
    sans = _subject_alt_names(hosts, ips)
    ca_cert, ca_key = load_ca(folder)
    cert_path, key_path = folder / SERVER_CERT, folder / SERVER_KEY
    _refuse_overwrite((cert_path, key_path), force)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    common_name = (list(hosts) + list(ips))[0]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_pair(cert, key, cert_path, key_path)
    return IssuedFiles(cert=cert_path, key=key_path)


def load_ca(
    directory: str | os.PathLike[str],
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Load and cross-check ``ca.crt`` / ``ca.key``: EC on P-256/P-384, a CA, one key pair."""
    folder = Path(directory)
    cert_path, key_path = folder / CA_CERT, folder / CA_KEY
    for path in (cert_path, key_path):
        if not path.is_file():
            raise PKIError(f"{path}: no CA here; run `fedmodel pki init {folder}` first")
    cert = _read_cert(cert_path)
    key = _read_ec_key(key_path)
    if cert.public_key() != key.public_key():
        raise PKIError(f"{key_path} does not belong to {cert_path} (public keys differ)")
    if not _is_ca(cert):
        raise PKIError(f"{cert_path}: not a CA certificate (basicConstraints CA:false or absent)")
    if cert.not_valid_after_utc <= _now():
        raise PKIError(f"{cert_path}: CA expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    return cert, key


def cert_fingerprint(path: str | os.PathLike[str]) -> str:
    """SHA-256 fingerprint of a PEM certificate, colon-free hex, for operators to compare."""
    return _read_cert(Path(path)).fingerprint(hashes.SHA256()).hex()


def _subject_alt_names(hosts: list[str], ips: list[str]) -> list[x509.GeneralName]:
    if not hosts and not ips:
        raise PKIError("a server certificate needs at least one --host or --ip")
    names: list[x509.GeneralName] = [x509.DNSName(_parse_host(h)) for h in hosts]
    names += [x509.IPAddress(_parse_ip(a)) for a in ips]
    return names


def _parse_host(host: str) -> str:
    """Reject IPs passed as host names: a DNS SAN never matches a connection made to an IP."""
    if _is_ip(host):
        raise PKIError(f"host {host!r} is an IP address; pass it with --ip")
    if not _DNS_NAME.match(host) or len(host) > 253:
        raise PKIError(f"bad host name {host!r} (letters, digits, '-' and '.' only)")
    return host.lower()


def _parse_ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(address.strip())
    except ValueError:
        raise PKIError(f"bad IP address {address!r}") from None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    """CA: keyCertSign + cRLSign; leaf: digitalSignature (ECDHE-ECDSA signs the handshake)."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _read_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError as err:
        raise PKIError(f"{path}: not a PEM certificate ({err})") from None


def _read_ec_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except TypeError:
        raise PKIError(
            f"{path}: the key is encrypted; fedmodel expects an unencrypted key"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as err:
        raise PKIError(f"{path}: not a PEM private key ({err})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, _CURVES):
        raise PKIError(f"{path}: wrong key type {_describe(key)}; expected EC P-256 or P-384")
    return key


def _describe(key: object) -> str:
    curve = getattr(key, "curve", None)
    return f"{type(key).__name__}/{curve.name}" if curve is not None else type(key).__name__


def _write_pair(
    cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, cert_path: Path, key_path: Path
) -> None:
    """Key first: a crash in between leaves a key without a cert, never a cert without its key."""
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    atomic_write_bytes(key_path, key_pem, mode=_KEY_MODE)
    atomic_write_bytes(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=_CERT_MODE)


def _refuse_overwrite(paths: tuple[Path, ...], force: bool) -> None:
    existing = [p.name for p in paths if p.exists()]
    if existing and not force:
        raise PKIError(
            f"{paths[0].parent}: {', '.join(existing)} already exist; pass --force to replace them"
        )


def _prepare_dir(directory: str | os.PathLike[str]) -> Path:
    folder = Path(directory)
    if folder.exists() and not folder.is_dir():
        raise PKIError(f"{folder}: exists and is not a directory")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _existing_dir(directory: str | os.PathLike[str]) -> Path:
    folder = Path(directory)
    if not folder.is_dir():
        raise PKIError(f"{folder}: no such directory; run `fedmodel pki init {folder}` first")
    return folder


def _validate_days(days: int) -> None:
    if days < 1:
        raise PKIError(f"days must be at least 1 (got {days})")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)
