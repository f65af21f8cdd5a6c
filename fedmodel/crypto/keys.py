"""Node key files: an Ed25519 signing key (ledger, audit log) and an EC P-384 authentication key.

Two keys with two jobs, kept apart so that rotating one never touches the other:

* ``<name>.ed25519`` (PEM PKCS#8) + ``<name>.ed25519.pub`` (PEM SubjectPublicKeyInfo) sign the
  node's privacy ledger. The public key (or its :func:`fingerprint`) is what the coordinator
  registers, so a reviewer can check a ledger without trusting the node's disk.
* ``<name>.auth`` (OpenSSH private key) + ``<name>.auth.pub`` (OpenSSH public key) authenticate
  the node to a Flower SuperLink (``flower-supernode --auth-supernode-private-key``); Flower's
  node authentication expects EC keys in OpenSSH format.

Private files are written atomically with mode 0600 and never replaced unless ``force=True``:
overwriting a signing key orphans the ledger it signed. Loading refuses a private key that group
or others may read, as OpenSSH does, because a leaked signing key lets anyone forge a ledger.
Every failure is a :class:`KeyFileError` whose message is one line naming the file.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519

from fedmodel.errors import FedmodelError
from fedmodel.io import atomic_write_bytes
from fedmodel.nodenames import NODE_NAME_RULE, is_node_name

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644
SIGNING_SUFFIX = ".ed25519"
AUTH_SUFFIX = ".auth"
PUBLIC_SUFFIX = ".pub"


class KeyFileError(FedmodelError):
    """A key file is missing, malformed, of the wrong type, too permissive, or already there."""


@dataclass(frozen=True)
class NodeIdentity:
    """The four files :func:`generate_node_identity` wrote, with the public keys' fingerprints."""

    name: str
    signing_key: Path
    signing_public: Path
    auth_key: Path
    auth_public: Path
    signing_fingerprint: str
    auth_fingerprint: str


def public_path(private_path: str | os.PathLike[str]) -> Path:
    """``<private>.pub``: the public half always sits beside the private file."""
    p = Path(private_path)
    return p.with_name(p.name + PUBLIC_SUFFIX)


def fingerprint(key: Any) -> str:
    """Hex sha256 of the public key: raw 32 bytes for Ed25519, DER SubjectPublicKeyInfo otherwise.

    Accepts a private key too (its public half is used), so callers never hash a private key.
    """
    if hasattr(key, "public_key"):
        key = key.public_key()
    if isinstance(key, ed25519.Ed25519PublicKey):
        data = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        data = key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    return hashlib.sha256(data).hexdigest()


# --- Ed25519 signing key ------------------------------------------------------------------------


def generate_signing_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def save_signing_key(
    key: ed25519.Ed25519PrivateKey, path: str | os.PathLike[str], *, force: bool = False
) -> Path:
    """Write ``path`` (PEM PKCS#8, 0600) and ``path.pub`` (PEM); returns the private path."""
    return _save_pem_pair(key, path, force)


def load_signing_key(path: str | os.PathLike[str]) -> ed25519.Ed25519PrivateKey:
    """Read an Ed25519 private key, refusing permissive files and other key types."""
    return _load_private(path, ed25519.Ed25519PrivateKey, "Ed25519")


def load_verify_key(path: str | os.PathLike[str]) -> ed25519.Ed25519PublicKey:
    """Read an Ed25519 public key (PEM, or an OpenSSH ``ssh-ed25519`` line)."""
    return _load_public(path, ed25519.Ed25519PublicKey, "Ed25519")


def save_exchange_key(
    key: x25519.X25519PrivateKey, path: str | os.PathLike[str], *, force: bool = False
) -> Path:
    """The ServerApp's X25519 key for sealed updates: PEM PKCS#8 (0600) and ``path.pub``."""
    return _save_pem_pair(key, path, force)


def load_exchange_key(path: str | os.PathLike[str]) -> x25519.X25519PrivateKey:
    """Read an X25519 private key with the same permission and type checks as every key file."""
    return _load_private(path, x25519.X25519PrivateKey, "X25519")


REGISTERED_SUFFIX = SIGNING_SUFFIX + PUBLIC_SUFFIX  # a registry holds "<node>.ed25519.pub"


def registered_verify_keys(directory: str | os.PathLike[str]) -> dict[str, Path]:
    """The coordinator's registry of node signing keys: ``<dir>/<node>.ed25519.pub``.

    The one place that knows the registry layout: the ServerApp checks sealed updates against it,
    and the compliance report checks ledgers against it (keys the sites' own disks cannot swap).
    """
    root = Path(directory)
    files = sorted(root.glob(f"*{REGISTERED_SUFFIX}")) if root.is_dir() else []
    if not files:
        raise KeyFileError(f"{root}: no registered node keys (*{REGISTERED_SUFFIX})")
    return {p.name.removesuffix(REGISTERED_SUFFIX): p for p in files}


def save_public_key(key: Any, path: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Write a public key as PEM (e.g. a ledger's ``signer.pub``), never replacing one silently."""
    target = Path(path)
    _refuse_overwrite([target], force)
    atomic_write_bytes(target, _pem_public(key), mode=PUBLIC_MODE)
    return target


# --- EC P-384 node authentication key (OpenSSH format, for Flower SuperNode auth) -------------


def generate_auth_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def save_auth_key(
    key: ec.EllipticCurvePrivateKey, path: str | os.PathLike[str], *, force: bool = False
) -> Path:
    """Write ``path`` (OpenSSH private key, 0600) and ``path.pub`` (OpenSSH public line)."""
    private = Path(path)
    _refuse_overwrite([private, public_path(private)], force)
    _write_key_pair(private, _openssh_private(key), _openssh_public(key.public_key()))
    return private


def load_auth_key(path: str | os.PathLike[str]) -> ec.EllipticCurvePrivateKey:
    """Read the EC node-authentication private key, refusing permissive files and other types."""
    return _load_private(path, ec.EllipticCurvePrivateKey, "EC (P-384)")


def load_auth_public_key(path: str | os.PathLike[str]) -> ec.EllipticCurvePublicKey:
    return _load_public(path, ec.EllipticCurvePublicKey, "EC (P-384)")


# --- both keys of a node ------------------------------------------------------------------------


def node_key_paths(name: str, directory: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(<dir>/<name>.ed25519, <dir>/<name>.auth)``: one naming rule for writers and readers."""
    if not is_node_name(name):
        raise KeyFileError(f"node name {name!r}: use {NODE_NAME_RULE}")
    d = Path(directory)
    return d / f"{name}{SIGNING_SUFFIX}", d / f"{name}{AUTH_SUFFIX}"


def generate_node_identity(
    name: str, directory: str | os.PathLike[str], force: bool = False
) -> NodeIdentity:
    """Create a node's signing and authentication key pairs in ``directory``.

    Every target is checked before anything is written, so a refusal leaves no half identity.
    """
    signing_path, auth_path = node_key_paths(name, directory)
    _refuse_overwrite(
        [signing_path, public_path(signing_path), auth_path, public_path(auth_path)], force
    )
    signing, auth = generate_signing_key(), generate_auth_key()
    save_signing_key(signing, signing_path, force=True)
    save_auth_key(auth, auth_path, force=True)
    return NodeIdentity(
        name=name,
        signing_key=signing_path,
        signing_public=public_path(signing_path),
        auth_key=auth_path,
        auth_public=public_path(auth_path),
        signing_fingerprint=fingerprint(signing),
        auth_fingerprint=fingerprint(auth),
    )


# --- helpers ------------------------------------------------------------------------------------


def _pem_private(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem_public(key: Any) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _openssh_private(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )


def _openssh_public(key: Any) -> bytes:
    return (
        key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n"
    )


def _refuse_overwrite(paths: list[Path], force: bool) -> None:
    if force:
        return
    for p in paths:
        if p.exists() or p.is_symlink():
            raise KeyFileError(f"{p}: key file already exists; pass --force to replace it")


def _save_pem_pair(key: Any, path: str | os.PathLike[str], force: bool) -> Path:
    private = Path(path)
    _refuse_overwrite([private, public_path(private)], force)
    _write_key_pair(private, _pem_private(key), _pem_public(key.public_key()))
    return private


def _write_key_pair(private: Path, private_bytes: bytes, public_bytes: bytes) -> None:
    """Public half first: a crash between the two never leaves a private key without its .pub."""
    atomic_write_bytes(public_path(private), public_bytes, mode=PUBLIC_MODE)
    atomic_write_bytes(private, private_bytes, mode=PRIVATE_MODE)


def _read_key_file(path: str | os.PathLike[str]) -> tuple[Path, bytes]:
    p = Path(path)
    if not p.exists():
        raise KeyFileError(f"{p}: no such key file")
    if not p.is_file():
        raise KeyFileError(f"{p}: not a regular file")
    try:
        return p, p.read_bytes()
    except OSError as err:
        raise KeyFileError(f"{p}: cannot read key file: {err.strerror}") from None


def _check_private_mode(p: Path) -> None:
    """Refuse keys readable or writable by group/others, as ssh does for its identity files."""
    mode = stat.S_IMODE(p.stat().st_mode)
    if mode & 0o077:
        raise KeyFileError(
            f"{p}: private key permissions {mode:04o} are too open (group/others have access); "
            f"run: chmod 600 {p}"
        )


class _Encrypted(Exception):
    """Internal marker: the key needs a passphrase."""


def _parse_private(data: bytes) -> Any | None:
    """Parse PEM (PKCS#8/traditional) or OpenSSH private keys; ``None`` when it is not a key."""
    loaders = (serialization.load_pem_private_key, serialization.load_ssh_private_key)
    for load in loaders:
        try:
            return load(data, password=None)
        except TypeError as err:  # encrypted key: we never store passphrase-protected keys
            raise _Encrypted() from err
        except (ValueError, UnsupportedAlgorithm):
            continue
    return None


def _parse_public(data: bytes) -> Any | None:
    loaders = (serialization.load_pem_public_key, serialization.load_ssh_public_key)
    for load in loaders:
        try:
            return load(data.strip())
        except (ValueError, UnsupportedAlgorithm):
            continue
    return None


def _load_private(path: str | os.PathLike[str], expected: type, label: str) -> Any:
    p, data = _read_key_file(path)
    try:
        key = _parse_private(data)
    except _Encrypted:
        raise KeyFileError(
            f"{p}: key is passphrase-protected; fedmodel expects an unencrypted key (mode 0600)"
        ) from None
    if key is None:
        hint = " (this looks like a public key)" if _parse_public(data) is not None else ""
        raise KeyFileError(f"{p}: not a private key in PEM or OpenSSH format{hint}")
    _check_private_mode(p)
    _check_type(p, key, expected, label, "private")
    return key


def _load_public(path: str | os.PathLike[str], expected: type, label: str) -> Any:
    p, data = _read_key_file(path)
    key = _parse_public(data)
    if key is None:
        raise KeyFileError(f"{p}: not a public key in PEM or OpenSSH format")
    _check_type(p, key, expected, label, "public")
    return key


def _check_type(p: Path, key: Any, expected: type, label: str, half: str) -> None:
    if isinstance(key, expected):
        if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) and not (
            isinstance(key.curve, ec.SECP384R1)
        ):
            raise KeyFileError(f"{p}: expected a P-384 EC key, found curve {key.curve.name}")
        return
    raise KeyFileError(f"{p}: expected an {label} {half} key, found {_describe(key)}")


def _describe(key: Any) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return f"an EC key ({key.curve.name})"
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "an Ed25519 key"
    return f"a {type(key).__name__.lstrip('_')}"
