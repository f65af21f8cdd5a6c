"""The report as plain data: one structure that every renderer (JSON, HTML, PDF, plots) reads.

Collecting and rendering are kept apart so that the three documents cannot disagree: each number
is computed once, stored here, and only formatted by the renderers. Everything is a dataclass of
built-in types so ``to_dict`` is a lossless, machine-readable copy (``report.json``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

SCHEMA_VERSION = "1"


@dataclass(frozen=True)
class Budget:
    """A node's cap as the data owner set it in ``node.toml``; absent means no cap."""

    epsilon: float
    delta: float
    source: str


@dataclass(frozen=True)
class Refusal:
    """A round the node declined to train because it would have crossed its cap."""

    round: int
    reason: str
    projected_epsilon: float | None
    source: str  # "ledger" (signed) or "metrics" (server's record only)


@dataclass(frozen=True)
class RoundFailure:
    """A round where a client errored (from metrics.jsonl); no privacy is spent on errors."""

    round: int
    reason: str


@dataclass(frozen=True)
class CrossCheck:
    """One epsilon from two independent accountants over the same history."""

    epsilon_prv: float
    epsilon_pld: float
    relative_difference: float
    tolerance: float
    within_tolerance: bool


@dataclass(frozen=True)
class LedgerStatus:
    """Where a client's ledger is and what verification established about it."""

    path: str | None
    verified: bool
    head_hash: str | None
    entry_count: int
    signer: str | None  # sha256 fingerprint of the Ed25519 key that signed the ledger
    key_source: str  # which public key the signatures were checked with
    key_pinned: bool  # True: the node's signing key named in node.toml; False: ledger's signer.pub
    heads_checked: int  # server-recorded heads from metrics.jsonl confirmed against the chain
    runs: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class EpsilonPoint:
    """Cumulative epsilon after a round, as the ledger recorded it when the round was signed."""

    round: int
    epsilon: float


@dataclass(frozen=True)
class ClientReport:
    """Everything a reviewer needs about one site's privacy spend."""

    node: str
    partition_id: int | None
    accountant: str  # the run's configured accountant (the report always recomputes PRV)
    mechanism: str
    epsilon: float  # recomputed with Opacus PRV from the full history; inf = no bound
    epsilon_rdp: float  # recomputed with Opacus RDP (an upper bound, for comparison)
    delta: float
    noise_multipliers: list[float]
    max_grad_norms: list[float]
    sample_rates: list[float]
    steps: int
    dataset_size: int | None
    history: list[list[float]]  # [noise_multiplier, sample_rate, steps] per trained round
    history_source: str  # "ledger" or "metrics (unverified)"
    rounds: list[int]
    unprotected_rounds: list[int]  # trained without DP noise (metrics): epsilon is unbounded
    refusals: list[Refusal]
    failures: list[RoundFailure]
    cap: Budget | None
    epsilon_against_cap: float | None  # epsilon at the cap's delta (equals epsilon if same delta)
    remaining_epsilon: float | None
    budget_exceeded: bool
    verdict: str
    crosscheck: CrossCheck
    membership_tpr_bound: float  # max TPR of any membership-inference attack at 1 % FPR
    recorded_epsilon: float | None  # last epsilon the ledger (or metrics) recorded
    records_agree: bool
    ledger: LedgerStatus
    epsilon_by_round: list[EpsilonPoint]


@dataclass(frozen=True)
class RunIdentity:
    """What run this is and which code and configuration produced it."""

    run_id: str
    scenario: str | None
    config_hash: str | None
    model_hash: str | None
    code_version: str | None
    started: str | None
    finished: str | None
    engine: str | None
    status: str | None  # "finished", "running" (report of a run still in progress), ...


@dataclass(frozen=True)
class Transport:
    """How updates travelled; ``None`` means run.json did not say (reported as unknown)."""

    tls: bool | None
    node_auth: bool | None
    sealed_updates: bool | None
    secure_aggregation: bool | None


@dataclass(frozen=True)
class CentralDP:
    """Client-level DP added by the server (Flower DifferentialPrivacy*Clipping wrappers)."""

    used: bool
    settings: dict[str, Any]
    epsilon: float | None  # as the server recorded it in run.json
    delta: float | None
    crosscheck: CrossCheck | None  # PRV vs PLD, when noise, delta and releases are known
    neighbouring: str | None = None  # the relation the epsilon is stated for
    epsilon_recomputed: float | None = None  # dp-accounting RDP from the recorded settings
    records_agree: bool = True  # the recorded epsilon is the recomputed one


@dataclass(frozen=True)
class RoundMetrics:
    """Server-side evaluation after one round plus who took part."""

    round: int
    server: dict[str, float]
    participants: list[str]
    refused: list[str]


@dataclass(frozen=True)
class AuditSummary:
    """The server's signed audit log (``audit.jsonl``) as verification found it."""

    verified: bool
    entries: int
    accepted: int
    rejected: int
    refused: int
    errors: int
    checkpoints: int
    signer: str | None  # fingerprint of the key that verified it
    key_source: str
    first_break: str | None  # "entry k: kind: detail", or why it could not be verified


@dataclass(frozen=True)
class Section:
    """A block of prose: a heading, paragraphs and bullet points, rendered by HTML and PDF alike."""

    kind: ClassVar[str] = "section"  # lets templates dispatch without isinstance
    title: str
    paragraphs: list[str] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Report:
    """The whole compliance report for one run."""

    schema_version: str
    generated_at: str
    generator: str
    run: RunIdentity
    transport: Transport
    strategy: dict[str, Any]
    central_dp: CentralDP
    clients: list[ClientReport]
    rounds: list[RoundMetrics]
    crosscheck_tolerance: float
    all_within_tolerance: bool
    any_budget_exceeded: bool
    warnings: list[str]
    threat_model: list[Section]
    dpia: list[Section]
    audit: AuditSummary | None = None  # None: the run folder has no audit log
    privacy_audit: PrivacyAuditSummary | None = None  # None: no privacy-audit.json

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy; dataclasses become dicts, nothing is rounded."""
        return asdict(self)


# --- empirical privacy audit (RUN_DIR/privacy-audit.json, fedmodel.report.privacy_audit) -----


@dataclass(frozen=True)
class MembershipAttack:
    """One membership-inference attack on the final model."""

    attack: str
    auc: float
    tpr_at_fpr: float
    fpr: float


@dataclass(frozen=True)
class CanaryFigures:
    """One canary audit: the lower bound it proved next to the epsilon that was accounted."""

    noise_off: bool  # the control run without noise: it should refute the claim
    canaries: int
    guesses: int
    correct: int
    confidence: float
    delta: float
    epsilon_lower_bound: float
    epsilon_ceiling: float
    epsilon_accounted: float
    noise_multiplier_trained: float
    seed: int

    @property
    def refutes_claim(self) -> bool:
        return self.epsilon_lower_bound > self.epsilon_accounted


@dataclass(frozen=True)
class PrivacyAuditSummary:
    """What ``privacy-audit.json`` says about one site, checked against this run."""

    node: str
    generated_at: str | None
    matches_run: bool  # made for this run id and this final model
    members: int
    non_members: int
    attacks: list[MembershipAttack]
    epsilon_site: float | None  # the report's own epsilon for the site (PRV, all its rounds)
    delta_site: float | None
    tpr_bound: float | None  # the highest TPR at the attacks' FPR that epsilon allows
    canaries: list[CanaryFigures] = field(default_factory=list)
