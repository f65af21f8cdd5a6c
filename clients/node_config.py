"""A node's own configuration (``node.toml``): identity, data, ledger, budget cap, site policy.

Everything that protects the site lives here, on the site's disk, and is read by the ClientApp
on every message. The coordinator can ask; only this file decides. In simulation each virtual
node gets its own folder and file, so caps and policies can differ per hospital.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from fedmodel.config import ModelName, PrivacyBudget, StrictModel, load_toml

NODE_FILE = "node.toml"


class SitePolicy(StrictModel):
    require_dp: bool = True
    min_noise_multiplier: float = Field(0.0, ge=0)
    max_grad_norm_cap: float | None = Field(None, gt=0, description="largest clipping norm allowed")
    allowed_models: list[ModelName] | None = None
    allowed_datasets: list[str] | None = None
    require_sealed_updates: bool = False


class NodeData(StrictModel):
    """Which rows are this node's. Packaged datasets are split by partition id."""

    partition_id: int | None = Field(None, ge=0)
    num_partitions: int | None = Field(None, ge=1)


class NodeConfig(StrictModel):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    ledger_dir: Path = Path("ledger")
    signing_key: Path = Field(Path("keys/signing.ed25519"), description="Ed25519, the ledger's")
    budget: PrivacyBudget | None = None
    policy: SitePolicy = Field(default_factory=SitePolicy)
    data: NodeData = Field(default_factory=NodeData)

    def resolved(self, base: Path) -> NodeConfig:
        """Relative paths are relative to the node file's folder, not the process's cwd."""
        return self.model_copy(
            update={
                "ledger_dir": _under(base, self.ledger_dir),
                "signing_key": _under(base, self.signing_key),
            }
        )


def load_node_config(path: str | Path) -> NodeConfig:
    p = Path(path)
    return load_toml(NodeConfig, p).resolved(p.parent)


def _under(base: Path, p: Path) -> Path:
    return p if p.is_absolute() else (base / p)
