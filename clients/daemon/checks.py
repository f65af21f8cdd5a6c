"""What ``fedmodel node start`` verifies before it starts anything.

Each check reads the file the way its user will (the CA as a certificate, the auth key as an EC
private key with safe permissions, the signing key as Ed25519), so a wrong file is one line
naming node.toml and the field, instead of a SuperNode that retries for ever or a ClientApp that
fails in the middle of a round.
"""

from __future__ import annotations

from pathlib import Path

from fedmodel.config import ConfigError
from fedmodel.crypto.keys import load_auth_key, load_signing_key
from fedmodel.crypto.pki import cert_fingerprint
from fedmodel.errors import FedmodelError
from fedmodel.node_config import NodeConfig, NodeDeployment, load_node_config
from server.deploy.processes import port_in_use


def load_deployed_node(path: str | Path) -> tuple[NodeConfig, NodeDeployment, Path]:
    """node.toml with a ``[deployment]`` table, every file it names checked; its absolute path."""
    source = Path(path).absolute()
    node = load_node_config(source)
    if node.deployment is None:
        raise ConfigError(f"{source}: no [deployment] table (superlink, root_certificates, ...)")
    dep = node.deployment
    try:
        if dep.root_certificates is not None:
            _require(dep.root_certificates, "deployment.root_certificates", source)
            cert_fingerprint(dep.root_certificates)
        if dep.auth_key is not None:
            _require(dep.auth_key, "deployment.auth_key", source)
            load_auth_key(dep.auth_key)
        _require(node.signing_key, "signing_key", source)
        load_signing_key(node.signing_key)
    except ConfigError:
        raise
    except FedmodelError as err:  # PKIError, KeyFileError: name node.toml too
        raise ConfigError(f"{source}: {err}") from None
    if (node.data.partition_id is None) != (node.data.num_partitions is None):
        raise ConfigError(f"{source}: data.partition_id and data.num_partitions go together")
    return node, dep, source


def check_budget(node: NodeConfig, source: Path) -> None:
    """A node that requires DP (the default policy) must also cap it: DP-SGD without a
    ``[budget]`` bounds each round but not what the site leaks over every run."""
    if node.policy.require_dp and node.budget is None:
        raise ConfigError(
            f"{source}: policy.require_dp is on but there is no [budget] (epsilon, delta): "
            "add this site's privacy cap before it joins a federation"
        )


def check_port_free(dep: NodeDeployment, source: Path) -> None:
    if port_in_use("127.0.0.1", dep.runtime_port):
        raise ConfigError(
            f"{source}: deployment.runtime_port {dep.runtime_port} is in use "
            "(another SuperNode on this host? each needs its own port)"
        )


def _require(path: Path, field: str, source: Path) -> None:
    if not path.is_file():
        raise ConfigError(f"{source}: {field}: no such file {path}")
