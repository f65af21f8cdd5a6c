"""Typed configuration: every knob fedmodel reads flows through these pydantic models.

One model per concern (data, partition, model, optimiser, DP, training, strategy, federation,
budget), composed into ``LocalTrainConfig`` (``fedmodel train-local``) and ``ScenarioConfig``
(``fedmodel simulate`` and the Flower apps). Unknown keys are rejected so that a typo in a TOML
file is an error naming the field, not a silently ignored setting.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from fedmodel.errors import ConfigError
from fedmodel.task import SiteFiles, TaskConfig

DatasetName = Literal[
    "mnist", "rotten-tomatoes", "heart", "german-credit", "adult", "digits", "breast-cancer"
]
ModelName = Literal["cnn", "mlp", "minilm", "scatternet", "custom"]
# "package.module:function": a model factory a site installed and approved (fedmodel.models.custom)
FACTORY_PATTERN = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"
FactorySpec = Annotated[str, StringConstraints(pattern=FACTORY_PATTERN)]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
StrategyName = Literal["fedavg", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg", "krum"]
Neighbouring = Literal["replace-one", "add-remove"]
# L2 sensitivity of the sum of clipped site updates, in units of the clipping norm C: adding or
# removing one site moves it by C, replacing one by up to 2C (its update and its opposite)
NEIGHBOURING_SENSITIVITY: dict[str, float] = {"add-remove": 1.0, "replace-one": 2.0}


class StrictModel(BaseModel):
    """Base for all config sections: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(StrictModel):
    dataset: DatasetName = "mnist"
    train_limit: int | None = Field(None, gt=0, description="seeded slice of training rows")
    test_limit: int | None = Field(None, gt=0, description="seeded slice of test rows")
    test_fraction: float = Field(
        0.2, gt=0, lt=1, description="held-out share where no natural test set exists (per site)"
    )
    augment: bool = Field(False, description="random shifts for images (training rows only)")
    max_length: int = Field(64, ge=8, le=512, description="tokeniser max length for text")
    seed: int = 0


class PartitionConfig(StrictModel):
    scheme: Literal["iid", "dirichlet", "natural"] = "iid"
    num_partitions: int = Field(1, ge=1)
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration (smaller = more skew)")
    seed: int = 0


class ModelConfig(StrictModel):
    name: ModelName = "cnn"
    dropout: float = Field(0.0, ge=0, lt=1)
    hidden_sizes: list[int] = Field(default_factory=lambda: [64, 32], description="MLP only")
    cnn_channels: list[int] = Field(default_factory=lambda: [16, 32], description="CNN only")
    scatter_scales: int = Field(
        2, ge=1, le=3, description="ScatterNet: wavelet scales J (the maps shrink by 2^J)"
    )
    scatter_angles: int = Field(8, ge=1, le=16, description="ScatterNet: wavelet angles L")
    scatter_groups: int = Field(
        27, ge=1, description="ScatterNet: GroupNorm groups over the scattering maps"
    )
    bert_layers: int = Field(6, ge=1, le=6, description="MiniLM encoder layers kept")
    bert_trainable: Literal[
        "head", "top-k", "lora", "lora-top-k", "bitfit", "all-but-embeddings"
    ] = Field(
        "head",
        description="MiniLM: what trains besides the head (embeddings always frozen); see "
        "fedmodel.models.bert",
    )
    bert_top_k: int = Field(
        1, ge=1, le=6, description="MiniLM top-k, lora-top-k: encoder layers trained"
    )
    bert_lora_rank: int = Field(8, ge=1, le=64, description="MiniLM lora, lora-top-k: adapter rank")
    bert_lora_alpha: float = Field(
        16.0, gt=0, description="MiniLM lora, lora-top-k: scale alpha / rank"
    )
    bert_pool_layers: int = Field(
        1,
        ge=1,
        le=6,
        description="MiniLM head: pool the mean of the last n layers' token states (1: the "
        "last layer only, the checkpoint's own pooling)",
    )
    bert_normalize: bool = Field(
        False,
        description="MiniLM: unit-length sentence vectors before the head (the checkpoint's "
        "own Normalize step)",
    )
    factory: FactorySpec | None = Field(
        None, description='custom only: "package.module:function" building the model'
    )
    factory_sha256: Sha256Hex | None = Field(
        None,
        description="custom only: the source digest the coordinator expects (fedmodel model "
        "hash); each site checks against the digest its own policy lists instead",
    )
    fix_for_dp: bool = Field(
        False,
        description="custom only: apply Opacus ModuleValidator.fix (e.g. BatchNorm to GroupNorm) "
        "when the model fails its DP-SGD validation",
    )

    @model_validator(mode="after")
    def _factory_only_for_custom(self) -> ModelConfig:
        if self.name == "custom" and self.factory is None:
            raise ValueError('model: name "custom" needs model.factory ("package.module:function")')
        if self.name != "custom" and (
            self.factory is not None or self.factory_sha256 is not None or self.fix_for_dp
        ):
            raise ValueError(
                f'model: factory, factory_sha256 and fix_for_dp need name "custom", not '
                f"{self.name!r}"
            )
        return self


class OptimizerConfig(StrictModel):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD only")
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["constant", "cosine", "step"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    step_size: int = Field(100, ge=1, description="steps between decays for the step schedule")
    gamma: float = Field(0.5, gt=0, le=1, description="decay factor for the step schedule")


class DPConfig(StrictModel):
    enabled: bool = True
    noise_multiplier: float | None = Field(None, ge=0)
    target_epsilon: float | None = Field(
        None, gt=0, description="calibrate noise so the steps that will really run reach this"
    )
    delta: float = Field(1e-5, gt=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)
    accountant: Literal["prv", "rdp"] = "prv"
    poisson_sampling: bool = Field(
        True,
        description="Poisson sampling, as the accountant assumes; federated runs and train-local "
        "refuse false (only timing benchmarks call DP-SGD with fixed batches)",
    )
    max_physical_batch_size: int | None = Field(
        None,
        gt=0,
        description="split each logical batch into physical batches of at most this size "
        "(Opacus' BatchMemoryManager); text rows go in order of length, so each physical batch "
        "pads only to its own longest row",
    )
    clipping: Literal["per-sample", "ghost", "fast"] = Field(
        "fast",
        description="per-sample: Opacus hooks; ghost: Opacus ghost clipping; fast: book-keeping "
        "(one backward pass, the same clipped gradients; fedmodel.training.clipping). fast and "
        "per-sample drop examples whose gradients are not finite; ghost does not (a node then "
        "withholds a non-finite update, which a crafted model can provoke: prefer fast)",
    )
    secure_mode: bool = False

    @model_validator(mode="after")
    def _one_noise_source(self) -> DPConfig:
        if self.enabled and (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError("dp: give exactly one of noise_multiplier or target_epsilon")
        return self


class TrainConfig(StrictModel):
    epochs: int = Field(1, ge=1, description="local epochs (per round when federated)")
    batch_size: int = Field(64, ge=1, description="logical batch; expected size under Poisson")
    eval_batch_size: int = Field(256, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1)
    seed: int = 0
    trunk_cache: bool = Field(
        True,
        description="compute a model's frozen lower layers once per site and data (cached on "
        "the site's disk) and run DP-SGD on the trainable top only; the same result, faster",
    )


class StrategyConfig(StrictModel):
    name: StrategyName = "fedavg"
    fraction_train: float = Field(1.0, gt=0, le=1)
    min_train_nodes: int | None = Field(
        None,
        ge=1,
        description="fewest sites a round may train with; absent: what the strategy needs "
        "(Krum 2f+3, every other strategy 1), so a run goes on without a lost site",
    )
    proximal_mu: float = Field(0.01, ge=0, description="FedProx")
    server_lr: float = Field(0.01, gt=0, description="FedAdam eta")
    server_beta1: float = Field(0.9, ge=0, lt=1)
    server_beta2: float = Field(0.99, ge=0, lt=1)
    server_tau: float = Field(1e-3, gt=0)
    trim_beta: float = Field(0.2, gt=0, lt=0.5, description="FedTrimmedAvg")
    krum_num_malicious: int = Field(0, ge=0)
    max_update_norm: float | Literal["auto", "off"] = Field(
        "auto",
        description="L2 bound on one update: a number; 'auto' = 10x the round's median update "
        "norm (from 3 replies on); 'off' = no bound (NaN/Inf are always rejected)",
    )

    def strategy_needs(self) -> int:
        """Sites the aggregation rule itself needs: Krum scores each update against its
        n - f - 2 nearest, so it needs 2f + 3; a mean, median or trimmed mean works with one."""
        return 2 * self.krum_num_malicious + 3 if self.name == "krum" else 1

    def min_nodes(self, num_clients: int) -> int:
        """The fewest sites a round trains with: the configured floor, else what the strategy
        needs, never more than the federation has."""
        wanted = self.min_train_nodes or self.strategy_needs()
        return max(1, min(wanted, num_clients))

    @model_validator(mode="after")
    def _positive_bound(self) -> StrategyConfig:
        bound = self.max_update_norm
        if isinstance(bound, float | int) and not bound > 0:
            raise ValueError("strategy.max_update_norm must be > 0, 'auto' or 'off'")
        return self


class FederationConfig(StrictModel):
    num_clients: int = Field(3, ge=1)
    rounds: int = Field(3, ge=1)
    client_cpus: float = Field(1.0, gt=0)
    client_gpus: float = Field(0.0, ge=0, le=1, description="fraction of a GPU per client")
    ray_num_cpus: int | None = Field(None, ge=1)


class SecurityConfig(StrictModel):
    """How updates travel: sealed to the server, or summed under SecAgg+ (never both).

    Sealing hides each update from the relay (the ServerApp still opens it, so validation and
    robust strategies work); secure aggregation hides it from the ServerApp too, at the price
    of a plain weighted mean of what SecAgg+ can quantise.
    """

    sealed_updates: bool = Field(
        False, description="nodes encrypt and sign updates to the ServerApp's pinned key"
    )
    secure_aggregation: bool = Field(
        False, description="Flower SecAgg+ (legacy workflow): the server sees only the sum"
    )
    secagg_num_shares: int = Field(3, ge=3, description="SecAgg+ key shares per node")
    secagg_reconstruction_threshold: int = Field(
        2, ge=2, description="shares needed to unmask a dropped node (< num_shares)"
    )
    secagg_clipping_range: float = Field(
        8.0, gt=0, description="SecAgg+ clips every weight to +-this before quantising"
    )
    secagg_quantization_range: int = Field(2**22, gt=0, description="SecAgg+ integer levels")
    secagg_max_weight: float | None = Field(
        None, gt=0, description="largest num-examples of one node (None: the training set size)"
    )
    secagg_timeout: float | None = Field(
        None, gt=0, description="seconds to wait per SecAgg+ stage (None: wait for all)"
    )

    @model_validator(mode="after")
    def _one_mode(self) -> SecurityConfig:
        if self.sealed_updates and self.secure_aggregation:
            raise ValueError(
                "security: choose sealed_updates or secure_aggregation; SecAgg+ already keeps "
                "each update from the relay and the server"
            )
        if self.secagg_reconstruction_threshold >= self.secagg_num_shares:
            raise ValueError("security: secagg_reconstruction_threshold must be < num_shares")
        return self


CompressionMethod = Literal["none", "int8", "int4"]


class CompressionConfig(StrictModel):
    """``[compression]``: how a site encodes its update for the wire, after DP-SGD noised it.

    ``int8``/``int4``: stochastic (unbiased) quantisation of the site's noised update (the
    trained weights minus the global model it started from) with one scale per tensor;
    ``top_k``: keep only that fraction of each tensor's largest-magnitude noised-update entries.
    Both are post-processing of a value that is already differentially private, so they cost no
    privacy and need no trust. Compressing *before* the noise (the clipped gradients) would
    change the sensitivity DP-SGD's noise is calibrated to: ``stage = "before-noise"`` is
    refused, there is no code path for it. See :mod:`fedmodel.compression`.
    """

    method: CompressionMethod = "none"
    top_k: float | None = Field(
        None, gt=0, le=1, description="fraction of each tensor's noised-update entries kept"
    )
    stage: Literal["after-noise", "before-noise"] = Field(
        "after-noise", description="only after-noise is allowed: compression post-processes"
    )

    @field_validator("stage")
    @classmethod
    def _after_noise_only(cls, stage: str) -> str:
        if stage != "after-noise":
            raise ValueError(
                "compressing before DP-SGD's noise is refused: it would change the update's "
                'sensitivity the noise is calibrated to; use stage = "after-noise"'
            )
        return stage

    @property
    def active(self) -> bool:
        """Whether the update leaves encoded (as a noised delta) rather than as plain weights."""
        return self.method != "none" or self.top_k is not None

    def describe(self) -> str:
        """``int8``, ``int4+top-k 0.1``, ``none``: what the records and the report show."""
        top = f"+top-k {self.top_k:g}" if self.top_k is not None else ""
        return f"{self.method}{top}"


class CentralDPConfig(StrictModel):
    """Client-level DP added by the server: Flower's DifferentialPrivacyServerSideFixedClipping.

    Each node's update is clipped to ``clipping_norm`` and the uniform mean of the m sampled
    updates gets Gaussian noise of stdev ``noise_multiplier * clipping_norm / m``; one release
    per round is composed. This protects whole sites, on top of (not instead of) the
    record-level DP-SGD every node enforces itself, and it trusts the ServerApp: the noise is
    added after the server has seen each update.

    ``neighbouring`` is the relation the epsilon is stated for. ``replace-one`` (default): one
    site's update swapped for any other moves the mean by up to 2C/m. The sites are a fixed,
    named set that takes part every round, so *whether* a site took part is no secret; what
    must stay hidden is what it contributed, and that is replace-one. ``add-remove`` (one
    site's update present or absent, C/m) is Flower's accountant's relation; for the same
    noise it states a smaller epsilon (heart: 8.07 against 21.9).
    """

    enabled: bool = False
    noise_multiplier: float = Field(1.0, gt=0, description="noise stdev / clipping_norm")
    clipping_norm: float = Field(1.0, gt=0, description="L2 bound on each node's model update")
    delta: float = Field(1e-3, gt=0, lt=1, description="client-level delta (~1/num_clients)")
    max_epsilon: float | None = Field(
        None, gt=0, description="refuse to start a run whose rounds would pass this epsilon"
    )
    neighbouring: Neighbouring = Field(
        "replace-one", description="neighbouring sites: one replaced (2C/m) or added/removed (C/m)"
    )

    @property
    def accounted_noise_multiplier(self) -> float:
        """The noise in units of the mean's sensitivity under ``neighbouring``: the Gaussian
        mechanism's own noise multiplier, which is what an accountant composes."""
        return self.noise_multiplier / NEIGHBOURING_SENSITIVITY[self.neighbouring]


def _require_poisson(dp: DPConfig, where: str) -> None:
    """The ledger signs "dp-sgd/poisson-gaussian": a run that shuffles fixed batches would be
    accounted and signed as the mechanism it did not run, so no run may ask for it."""
    if dp.enabled and not dp.poisson_sampling:
        raise ValueError(
            f"{where}dp.poisson_sampling = false is refused: the accountant and the signed ledger "
            "assume Poisson subsampling, fixed shuffled batches would be mislabelled"
        )


class EvaluationConfig(StrictModel):
    """Where the global model is evaluated, so that no one evaluates on rows they do not own.

    ``server``: ``public`` evaluates on the dataset's own test split, which the coordinator owns
    (MNIST's, say), and is refused where the test rows are the sites' rows (a natural, per-site
    partition such as the heart hospitals); ``none`` skips server evaluation; ``oracle``
    evaluates on the sites' held-out rows anyway, for simulation only, and the report marks it
    so; ``auto`` is ``public`` where that is allowed and ``none`` elsewhere.

    ``federated``: every site evaluates the global model on its own held-out rows and releases
    noised counts (a Gaussian release charged to its ledger), when its policy opts in.
    """

    server: Literal["auto", "public", "none", "oracle"] = "auto"
    federated: bool = False
    federated_rounds: Literal["last", "every"] = Field(
        "last",
        description="rounds the sites evaluate in: each evaluation is a release every site "
        "pays for in epsilon, so by default only the final model is evaluated",
    )


class PrivacyBudget(StrictModel):
    epsilon: float = Field(gt=0)
    delta: float = Field(gt=0, lt=1)


class LocalTrainConfig(StrictModel):
    """``fedmodel train-local``: one model trained centrally."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    dp: DPConfig = Field(default_factory=lambda: DPConfig(noise_multiplier=1.0))
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="after")
    def _poisson(self) -> LocalTrainConfig:
        _require_poisson(self.dp, "")
        return self


class SimSite(SiteFiles):
    """``[[sites]]``: one virtual site of a simulation and its own files, so a researcher
    simulates exactly the federation they will deploy (each becomes a node's ``[data]``)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class ScenarioConfig(StrictModel):
    """A federated scenario: what ``fedmodel simulate`` runs and the Flower apps read.

    With a ``[task]`` every site trains on its own files mapped to the declaration (``data``
    and ``partition`` are then unused); without one, on a packaged dataset's partition.
    """

    name: str = "custom"
    description: str = ""
    task: TaskConfig | None = None
    sites: list[SimSite] = Field(default_factory=list, description="simulation: per-site files")
    data: DataConfig = Field(default_factory=DataConfig)
    partition: PartitionConfig = Field(default_factory=PartitionConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    dp: DPConfig = Field(default_factory=lambda: DPConfig(noise_multiplier=1.0))
    train: TrainConfig = Field(default_factory=TrainConfig)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    federation: FederationConfig = Field(default_factory=FederationConfig)
    budget: PrivacyBudget | None = Field(None, description="default per-client cap (node's own)")
    client_budgets: dict[int, PrivacyBudget] = Field(
        default_factory=dict, description="per-partition caps, e.g. hospitals with different caps"
    )
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    central_dp: CentralDPConfig = Field(default_factory=CentralDPConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    compression: CompressionConfig = Field(
        default_factory=CompressionConfig,
        description="what the coordinator asks sites to do to their noised updates; each "
        "site's node.toml [compression] decides",
    )

    @model_validator(mode="after")
    def _poisson(self) -> ScenarioConfig:
        _require_poisson(self.dp, "")
        return self

    @model_validator(mode="after")
    def _secagg_needs_a_mean(self) -> ScenarioConfig:
        if self.security.secure_aggregation and self.strategy.name != "fedavg":
            raise ValueError(
                f"strategy {self.strategy.name!r} needs each update; secure aggregation only "
                "yields their weighted sum (use fedavg)"
            )
        return self

    @model_validator(mode="after")
    def _central_dp_needs_a_uniform_mean(self) -> ScenarioConfig:
        """Flower accounts central DP only for a uniform FedAvg mean of every clipped update."""
        if not self.central_dp.enabled:
            return self
        if self.strategy.name not in ("fedavg", "fedprox"):
            raise ValueError(
                f"central_dp: strategy {self.strategy.name!r} is not a mean of the clipped "
                "updates; Flower's accountant covers fedavg and fedprox only"
            )
        if self.security.secure_aggregation:
            raise ValueError(
                "central_dp: not with secure_aggregation (the server must clip each update)"
            )
        return self

    @model_validator(mode="after")
    def _sites_need_a_task(self) -> ScenarioConfig:
        if not self.sites:
            return self
        if self.task is None:
            raise ValueError("sites: per-site files need a [task] that declares their columns")
        names = [s.name for s in self.sites]
        if len(set(names)) != len(names):
            raise ValueError("sites: two sites have the same name")
        if self.federation.num_clients != len(self.sites):
            raise ValueError(
                f"federation.num_clients is {self.federation.num_clients} but {len(self.sites)} "
                "sites are listed: one virtual node per site"
            )
        return self

    def budget_for(self, partition_id: int) -> PrivacyBudget | None:
        return self.client_budgets.get(partition_id, self.budget)

    def partition_for_clients(self) -> PartitionConfig:
        """The partitioning actually used: one partition per federated client."""
        return self.partition.model_copy(update={"num_partitions": self.federation.num_clients})

    def without_budgets(self) -> ScenarioConfig:
        """What the server may send to nodes: caps are each node's own, never the server's, and
        a site reads its own ``[data]``, never the simulation's list of everyone's files."""
        return self.model_copy(update={"budget": None, "client_budgets": {}, "sites": []})


M = TypeVar("M", bound=BaseModel)


def config_hash(cfg: BaseModel) -> str:
    """Stable sha256 of a config's canonical JSON; names a run's configuration in records."""
    payload = json.dumps(cfg.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line naming the first offending field, e.g. ``scenario.toml: dp.delta: ...``."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(root)"
    return f"{source}: {loc}: {first['msg']}"


def parse_config(model: type[M], data: dict, source: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def read_toml(path: str | Path) -> dict:
    """A TOML file's tables; a missing or malformed file is a ``ConfigError`` naming it."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such config file")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{p}: malformed TOML: {err}") from None


def load_toml(model: type[M], path: str | Path) -> M:
    """Read and validate a TOML config; every failure is a ``ConfigError`` naming the file."""
    return parse_config(model, read_toml(path), str(path))
