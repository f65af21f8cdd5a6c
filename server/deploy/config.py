"""The coordinator's ``server.toml``: where the SuperLink listens, its TLS files, the allowed nodes.

Example (paths are relative to the file's folder)::

    host = "0.0.0.0"                  # the public HTTPS port: the Fleet API (SuperNodes) only
    port = 9092
    control_port = 9093               # Control + Runtime APIs, on 127.0.0.1 only (flwr, ServerApps)
    address = "fl.example.org:9092"   # the public address sites dial (shown at start)
    state_dir = "state"               # state.db, Flower home, server keys, pid file
    log_file = "logs/superlink.log"

    [tls]
    ca = "pki/ca.crt"
    cert = "pki/server.pem"
    key = "pki/server.key"

    [run]
    out_dir = "runs"
    round_timeout = 600

    [[nodes]]
    name = "hospital-a"
    auth_public_key = "keys/hospital-a.auth.pub"        # SuperNode authentication
    ledger_public_key = "keys/hospital-a.ed25519.pub"   # verifies its ledger and sealed updates

Loading checks every file it names (exists, parses, right key type) so a typo is one line at
``fedmodel server start``, not a SuperLink that starts and then refuses every node. ``insecure =
true`` (no TLS, hence no node authentication) exists for benchmarks on one host: it is refused
unless ``host`` (and ``address``, if given) is loopback.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from fedmodel.config import ConfigError, StrictModel, load_toml
from fedmodel.crypto.keys import load_auth_public_key, load_verify_key
from fedmodel.crypto.pki import cert_fingerprint
from fedmodel.errors import FedmodelError
from fedmodel.net import host_of, is_loopback
from fedmodel.nodenames import NODE_NAME_PATTERN, NODE_NAME_RULE
from fedmodel.partitions import Assignment, check_assignment

DEFAULT_PORT = 9092
DEFAULT_CONTROL_PORT = 9093  # Flower's former Control API port
CONTROL_HOST = "127.0.0.1"


class TLSFiles(StrictModel):
    ca: Path = Field(description="CA certificate the nodes pin (fedmodel pki init)")
    cert: Path = Field(description="SuperLink certificate (fedmodel pki server-cert)")
    key: Path = Field(description="its private key")


class AllowedNode(StrictModel):
    name: str = Field(pattern=NODE_NAME_PATTERN, description=NODE_NAME_RULE)
    auth_public_key: Path | None = Field(None, description="<name>.auth.pub (OpenSSH EC P-384)")
    ledger_public_key: Path | None = Field(None, description="<name>.ed25519.pub (PEM Ed25519)")
    partition_id: int | None = Field(
        None, ge=0, description="the packaged partition this site trains on (coordinator-assigned)"
    )


class RunDefaults(StrictModel):
    out_dir: Path = Path("runs")
    round_timeout: float = Field(600.0, gt=0, description="seconds a round waits for replies")


class ServerConfig(StrictModel):
    host: str = "127.0.0.1"
    port: int = Field(DEFAULT_PORT, ge=1, le=65535, description="public: the Fleet API only")
    control_port: int = Field(
        DEFAULT_CONTROL_PORT, ge=1, le=65535, description="Control + Runtime APIs, 127.0.0.1 only"
    )
    address: str | None = Field(None, description="public host:port the sites dial")
    state_dir: Path = Path("state")
    log_file: Path = Path("logs/superlink.log")
    log_max_bytes: int = Field(10 * 2**20, ge=4096)
    log_backups: int = Field(5, ge=1)
    insecure: bool = Field(False, description="no TLS, no node auth: loopback benchmarks only")
    tls: TLSFiles | None = None
    run: RunDefaults = Field(default_factory=RunDefaults)
    nodes: list[AllowedNode] = Field(default_factory=list)

    def assignment(self) -> Assignment:
        """Each node with a ``partition_id``, of as many partitions as there are nodes."""
        parts = len(self.nodes)
        return {n.name: (n.partition_id, parts) for n in self.nodes if n.partition_id is not None}

    @model_validator(mode="after")
    def _transport(self) -> ServerConfig:
        if self.insecure == (self.tls is not None):
            raise ValueError("give a [tls] table, or insecure = true (loopback benchmarks only)")
        if self.insecure and not _on_loopback(self.host, self.address):
            raise ValueError(
                f"insecure = true is for loopback only (host {self.host!r}, address "
                f"{self.address!r}); give a [tls] table"
            )
        if self.assignment():
            check_assignment(self.assignment(), "nodes")
        if self.control_port == self.port:
            raise ValueError(f"control_port must differ from port ({self.port})")
        names = [n.name for n in self.nodes]
        if len(names) != len(set(names)):
            raise ValueError(f"node names must be unique, got {names}")
        if not self.insecure and any(n.auth_public_key is None for n in self.nodes):
            raise ValueError("every node needs auth_public_key when TLS is on")
        return self

    @property
    def node_auth(self) -> bool:
        return not self.insecure

    @property
    def public_address(self) -> str:
        """Where the sites reach the Fleet API: ``address``, else the listen address."""
        if self.address:
            return self.address
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"{host}:{self.port}"

    @property
    def control_address(self) -> str:
        """What every coordinator command dials (``flwr``, registration, run submission)."""
        return f"{CONTROL_HOST}:{self.control_port}"

    @property
    def flwr_home(self) -> Path:
        """Private Flower home: the `flwr` connection, and the ServerApp's installed FABs."""
        return self.state_dir / "flwr-home"

    @property
    def database(self) -> Path:
        return self.state_dir / "state.db"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "superlink.pid"

    @property
    def server_keys_dir(self) -> Path:
        return self.state_dir / "server-keys"

    @property
    def registry_dir(self) -> Path:
        """``<name>.ed25519.pub`` of every node with a ledger key, for sealed updates."""
        return self.state_dir / "registry"

    def resolved(self, base: Path) -> ServerConfig:
        """Relative paths are relative to server.toml's folder, not the process's cwd."""
        tls = self.tls
        if tls is not None:
            tls = TLSFiles(ca=_under(base, tls.ca), cert=_under(base, tls.cert),
                           key=_under(base, tls.key))  # fmt: skip
        nodes = [
            n.model_copy(
                update={
                    "auth_public_key": _under_opt(base, n.auth_public_key),
                    "ledger_public_key": _under_opt(base, n.ledger_public_key),
                }
            )
            for n in self.nodes
        ]
        run = self.run.model_copy(update={"out_dir": _under(base, self.run.out_dir)})
        return self.model_copy(
            update={
                "state_dir": _under(base, self.state_dir),
                "log_file": _under(base, self.log_file),
                "tls": tls,
                "nodes": nodes,
                "run": run,
            }
        )


def load_server_config(path: str | Path) -> ServerConfig:
    """Parse, resolve and check every file ``server.toml`` names; one ConfigError line if not."""
    p = Path(path).absolute()
    cfg = load_toml(ServerConfig, p).resolved(p.parent)
    _check_files(cfg, p)
    return cfg


def _check_files(cfg: ServerConfig, source: Path) -> None:
    try:
        if cfg.tls is not None:
            for field, file in (("tls.ca", cfg.tls.ca), ("tls.cert", cfg.tls.cert)):
                _require_file(file, field, source)
                cert_fingerprint(file)
            _require_file(cfg.tls.key, "tls.key", source)
        for node in cfg.nodes:
            if node.auth_public_key is not None:
                _require_file(node.auth_public_key, f"nodes.{node.name}.auth_public_key", source)
                load_auth_public_key(node.auth_public_key)
            if node.ledger_public_key is not None:
                _require_file(
                    node.ledger_public_key, f"nodes.{node.name}.ledger_public_key", source
                )
                load_verify_key(node.ledger_public_key)
    except ConfigError:
        raise
    except FedmodelError as err:  # PKIError, KeyFileError: name the config file too
        raise ConfigError(f"{source}: {err}") from None


def _require_file(path: Path, field: str, source: Path) -> None:
    if not path.is_file():
        raise ConfigError(f"{source}: {field}: no such file {path}")


def _on_loopback(host: str, address: str | None) -> bool:
    return is_loopback(host) and (address is None or is_loopback(host_of(address)))


def _under(base: Path, p: Path) -> Path:
    return p if p.is_absolute() else base / p


def _under_opt(base: Path, p: Path | None) -> Path | None:
    return None if p is None else _under(base, p)
