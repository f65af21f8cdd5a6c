"""A node's own configuration (``node.toml``): identity, data, ledger, budget cap, site policy.

Everything that protects the site lives here, on the site's disk, and is read by the ClientApp
on every message. The coordinator can ask; only this file decides. In simulation each virtual
node gets its own folder and file, so caps and policies can differ per hospital.

A deployed node adds a ``[deployment]`` table (read by ``fedmodel node start``)::

    [deployment]
    superlink = "fl.example.org:9092"   # the coordinator's SuperLink
    root_certificates = "pki/ca.crt"    # the federation CA the SuperLink's certificate chains to
    auth_key = "keys/hospital-a.auth"   # OpenSSH EC P-384, registered by the coordinator
    runtime_port = 9094                 # this node's local Runtime API; distinct per node on a host
    state_dir = "state"                 # Flower home, pid file, launcher secret
    log_file = "logs/node.log"          # rotated by size
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, StringConstraints, model_validator

from fedmodel.config import (
    CompressionConfig,
    ConfigError,
    FactorySpec,
    ModelName,
    PrivacyBudget,
    Sha256Hex,
    StrictModel,
    load_toml,
)
from fedmodel.net import host_of, is_loopback
from fedmodel.nodenames import NODE_NAME_PATTERN, NODE_NAME_RULE
from fedmodel.privacy.highwater import MARK_FILE
from fedmodel.task import TASK_NAME_PATTERN, SiteFiles

NODE_FILE = "node.toml"


class SitePolicy(StrictModel):
    """What this site refuses, whatever a request asks, and what it agrees to release.

    Every field is signed into the ledger (a ``policy`` entry) whenever it changes, so a report
    shows the policy a site really ran under. The release fields default to the strictest
    reading: a site sends its DP update and public configuration, nothing else.
    """

    require_dp: bool = True
    min_noise_multiplier: float = Field(0.0, ge=0)
    max_grad_norm_cap: float | None = Field(None, gt=0, description="largest clipping norm allowed")
    allowed_models: list[ModelName] | None = Field(
        None,
        description="model names a run may use; absent: any. A site that lists them and "
        'approves a custom factory lists "custom" too',
    )
    allowed_model_factories: dict[FactorySpec, Sha256Hex] = Field(
        default_factory=dict,
        description='"package.module:function" -> the SHA-256 of its sources the site approved '
        "(fedmodel model hash); a custom model is imported only when listed and unchanged. "
        "Empty: no custom model",
    )
    allowed_datasets: list[str] | None = None
    allowed_tasks: list[Annotated[str, StringConstraints(pattern=TASK_NAME_PATTERN)]] | None = (
        Field(None, description="declared tasks this site's own data may serve (absent: any)")
    )
    require_sealed_updates: bool | None = Field(
        None,
        description="refuse runs whose updates the relay could read; absent: on for a node "
        "deployed over TLS (a [deployment] table without insecure), off in simulation",
    )
    max_delta: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="largest delta a run may use here; absent: 1/(10 n) for this site's n rows",
    )
    share_train_metrics: bool = Field(
        False,
        description="release noised training loss, accuracy and example count (a Gaussian "
        "mechanism charged to the ledger with every round); off: none of them leaves the site",
    )
    share_eval_metrics: bool = Field(
        False,
        description="in federated evaluation, release noised counts of the global model's "
        "correct predictions on this site's held-out rows (charged to the ledger)",
    )
    metrics_noise_multiplier: float = Field(
        8.0, ge=1.0, description="noise / sensitivity of each statistics release (per round)"
    )
    metrics_loss_bound: float = Field(
        5.0, gt=0, description="per-example loss is clipped to [0, bound] before it is summed"
    )
    dataset_size_public: bool = Field(
        True,
        description="the site treats its row count as public (DP-SGD's sample rate 1/ceil(n/B) "
        "reveals it to within a batch); false: the reply carries no sample rate, steps or epsilon",
    )


class SiteCompression(CompressionConfig):
    """``[compression]`` in node.toml: this site decides how its noised update leaves.

    ``follow_request = true`` (default): the site honours whatever compression the
    coordinator's scenario asks for. ``false``: the site ignores the request and applies its own
    ``method`` / ``top_k`` here (``none`` refuses compression; ``int4`` is a site on a slow
    link that compresses unasked). Either way the server decodes what arrives, since every
    payload says how it was encoded. Compression never needs trust: it post-processes an
    update that is already differentially private.
    """

    follow_request: bool = True

    def resolve(self, requested: CompressionConfig) -> CompressionConfig:
        """The compression this site applies to a run that asks for ``requested``."""
        if self.follow_request:
            return requested
        return CompressionConfig(method=self.method, top_k=self.top_k, stage=self.stage)


class NodeData(SiteFiles):
    """Which rows are this node's: its own files (``path``, mapped to a declared task), or a
    partition of a packaged dataset that the coordinator assigns."""

    path: Path | None = Field(None, description="this site's own file or folder")  # type: ignore[assignment]
    partition_id: int | None = Field(None, ge=0)
    num_partitions: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_source(self) -> NodeData:
        if self.path is not None and self.partition_id is not None:
            raise ValueError("give path (the site's own files) or partition_id, not both")
        return self

    def site_files(self) -> SiteFiles | None:
        """The site's own files, or ``None`` for a packaged partition."""
        if self.path is None:
            return None
        fields = self.model_dump(exclude={"partition_id", "num_partitions"})
        return SiteFiles.model_validate(fields)


class NodeDeployment(StrictModel):
    """How a real site reaches the federation (``fedmodel node start``); absent in simulation."""

    superlink: str = Field(pattern=r"^\S+:\d{1,5}$", description="SuperLink host:port")
    root_certificates: Path | None = Field(None, description="federation CA certificate (PEM)")
    auth_key: Path | None = Field(None, description="SuperNode auth key, <name>.auth (OpenSSH)")
    insecure: bool = Field(False, description="no TLS, no node auth: loopback benchmarks only")
    runtime_port: int = Field(9094, ge=1, le=65535, description="local Runtime API port")
    state_dir: Path = Path("state")
    log_file: Path = Path("logs/node.log")
    log_max_bytes: int = Field(10 * 2**20, ge=4096)
    log_backups: int = Field(5, ge=1)
    warm_launcher: bool = Field(True, description="fork ClientApps from a warm process")
    poll_interval: float = Field(
        0.5, gt=0, le=3, description="idle SuperNode poll, s (Flower's own: 3)"
    )
    activation_grace: float = Field(
        75.0, ge=0, description="s to retry a refused activation (a crashed self may linger)"
    )

    @model_validator(mode="after")
    def _transport(self) -> NodeDeployment:
        if self.insecure and (self.root_certificates or self.auth_key):
            raise ValueError("insecure = true cannot use root_certificates or auth_key")
        if self.insecure and not is_loopback(host_of(self.superlink)):
            raise ValueError(f"insecure = true is for loopback only, not {self.superlink}")
        if not self.insecure and (self.root_certificates is None or self.auth_key is None):
            raise ValueError("give root_certificates and auth_key (or insecure = true)")
        return self

    def resolved(self, base: Path) -> NodeDeployment:
        return self.model_copy(
            update={
                "root_certificates": _under_opt(base, self.root_certificates),
                "auth_key": _under_opt(base, self.auth_key),
                "state_dir": _under(base, self.state_dir),
                "log_file": _under(base, self.log_file),
            }
        )


class NodeConfig(StrictModel):
    name: str = Field(pattern=NODE_NAME_PATTERN, description=NODE_NAME_RULE)
    ledger_dir: Path = Path("ledger")
    high_water_mark: Path = Field(
        Path(MARK_FILE),
        description="signed count and head the ledger reached; keep it outside ledger_dir",
    )
    signing_key: Path = Field(Path("keys/signing.ed25519"), description="Ed25519, the ledger's")
    cache_dir: Path = Field(
        Path("cache"),
        description="derived rows kept on this site's disk (tokens, frozen-trunk outputs); "
        "never sent anywhere, safe to delete",
    )
    budget: PrivacyBudget | None = None
    policy: SitePolicy = Field(default_factory=SitePolicy)
    data: NodeData = Field(default_factory=NodeData)
    compression: SiteCompression = Field(default_factory=SiteCompression)
    deployment: NodeDeployment | None = None

    @model_validator(mode="after")
    def _sealing_default(self) -> NodeConfig:
        """A deployed site's updates cross a relay it does not control: sealing is on unless
        its ``[policy]`` turns it off by name. The resolved value is what the ledger signs."""
        if self.policy.require_sealed_updates is None:
            deployed = self.deployment is not None and not self.deployment.insecure
            self.policy = self.policy.model_copy(update={"require_sealed_updates": deployed})
        return self

    def resolved(self, base: Path) -> NodeConfig:
        """Relative paths are relative to the node file's folder, not the process's cwd."""
        return self.model_copy(
            update={
                "ledger_dir": _under(base, self.ledger_dir),
                "high_water_mark": _under(base, self.high_water_mark),
                "signing_key": _under(base, self.signing_key),
                "cache_dir": _under(base, self.cache_dir),
                "data": self.data if self.data.path is None else self.data.resolved(base),
                "deployment": self.deployment and self.deployment.resolved(base),
            }
        )


def load_node_config(path: str | Path) -> NodeConfig:
    p = Path(path)
    node = load_toml(NodeConfig, p).resolved(p.parent)
    if node.high_water_mark.resolve().is_relative_to(node.ledger_dir.resolve()):
        raise ConfigError(
            f"{p}: high_water_mark must be outside ledger_dir: whoever restores or cuts the "
            "ledger folder must not take its mark along"
        )
    return node


def _under(base: Path, p: Path) -> Path:
    return p if p.is_absolute() else (base / p)


def _under_opt(base: Path, p: Path | None) -> Path | None:
    return None if p is None else _under(base, p)
