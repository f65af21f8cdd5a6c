"""The report as plain data: one structure that every renderer (JSON, HTML, PDF, plots) reads.

Collecting and rendering are kept apart so that the three documents cannot disagree: each number
is computed once, stored here, and only formatted by the renderers. Everything is a dataclass of
built-in types so ``to_dict`` is a lossless, machine-readable copy (``report.json``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

# 2: caps from signed policy entries (cap.entry, cap_status, policy), steps = DP-SGD steps of
# this run, released values, delta flags, evaluation, coverage; 3: data (declared task,
# site-fitted); 4: students (models distilled from the final one: accuracy, size, speed)
SCHEMA_VERSION = "4"


@dataclass(frozen=True)
class Budget:
    """A site's cap as it signed it into its ledger (a ``policy`` entry); absent means none.

    ``source`` names the signed entry ("signed policy, ledger entry 5"): a cap is only ever read
    from a signature, never from a ``node.toml`` anyone with the site's disk can edit.
    """

    epsilon: float
    delta: float
    source: str
    entry: int | None = None  # the policy entry's position in the ledger


@dataclass(frozen=True)
class SignedPolicy:
    """One ``policy`` entry: the cap and the whole ``[policy]`` table a site signed, in force
    for every decision after it until the next one."""

    entry: int
    time: str
    run_id: str
    cap_epsilon: float | None
    cap_delta: float | None
    policy: dict[str, Any]
    policy_sha256: str | None


@dataclass(frozen=True)
class DeltaFlag:
    """A spend whose delta is large for the rows it protects (``n`` = its dataset size).

    ``limit`` is ``1/(10 n)``; ``allowed_by`` names the signed ``max_delta`` that allowed a delta
    above it (``None``: nothing did). ``at_least_one_over_n``: delta >= 1/n, flagged always.
    """

    entry: int
    run_id: str
    round: int
    kind: str
    delta: float
    dataset_size: int
    limit: float
    allowed_by: str | None
    at_least_one_over_n: bool


@dataclass(frozen=True)
class ReleasedValue:
    """One kind of value that left a site in this run, and how it was protected.

    ``what``: ``model-update``, ``train-metrics``, ``eval-counts`` (or another signed release
    name), ``accounting-parameters``, ``ledger-heads``, ``refusals``. ``protection``: ``dp-sgd``,
    ``gaussian``, ``none`` (no DP: unbounded), ``public-configuration`` or ``signed-record``.
    ``entries``: the ledger entries that charged (or recorded) it.
    """

    what: str
    label: str
    protection: str
    rounds: list[int]
    entries: list[int]
    detail: str
    mechanism: str | None = None
    noise_multiplier: float | None = None
    flagged: bool = False


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
    cap: Budget | None  # the current signed cap (the ledger's last policy entry)
    epsilon_against_cap: float | None  # by the run's accountant at the cap's delta; inf: no DP
    remaining_epsilon: float | None
    budget_exceeded: bool  # the signed history against the current signed cap
    verdict: str
    crosscheck: CrossCheck
    membership_tpr_bound: float  # max TPR of any membership-inference attack at 1 % FPR
    recorded_epsilon: float | None  # last epsilon the ledger (or metrics) recorded
    records_agree: bool
    ledger: LedgerStatus
    epsilon_by_round: list[EpsilonPoint]
    epsilon_accounted: float = math.inf  # by the accountant the run used (PRV or RDP)
    cap_status: str = "unsigned"  # "signed", "uncapped" (signed, no cap), "unsigned" (none signed)
    policy: SignedPolicy | None = None  # the current signed policy
    policy_entries: list[int] = field(default_factory=list)  # every policy entry, in order
    spends_past_cap_in_force: list[int] = field(default_factory=list)  # entries over their cap
    unbounded: bool = False  # a spend without DP noise: no finite epsilon
    delta_flags: list[DeltaFlag] = field(default_factory=list)
    released: list[ReleasedValue] = field(default_factory=list)


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
    """Server-side evaluation after one round plus who took part; ``federated``: the sites'
    noised evaluation counts summed (accuracy, loss, count, num_sites, noised), if any."""

    round: int
    server: dict[str, float]
    participants: list[str]
    refused: list[str]
    federated: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Evaluation:
    """Where the model was evaluated (run.json ``evaluation``); ``server`` is ``public``,
    ``none``, ``oracle`` (the sites' own held-out rows: a simulation-only oracle) or
    ``not recorded``."""

    server: str
    server_data: str | None
    federated: bool
    federated_data: str | None
    oracle: bool  # the server evaluated on the sites' rows: simulation only, flagged


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
class StudentModel:
    """A student distilled from the final model (``RUN_DIR/students/NAME``), as recorded.

    Accuracies are on the same evaluation rows (``None``: unlabelled public rows), disjoint from
    the ``distill_rows`` it learned from; sizes are parameters and weights-file bytes, speed CPU
    milliseconds per batch of ``batch_size``, each beside the teacher's.
    """

    name: str
    architecture: str
    public_data: str
    distill_rows: int
    eval_rows: int
    accuracy: float | None
    teacher_accuracy: float | None
    agreement: float
    parameters: int
    teacher_parameters: int
    bytes_on_disk: int
    teacher_bytes_on_disk: int
    ms_per_batch: float
    teacher_ms_per_batch: float
    batch_size: int
    matches_model: bool  # taught by this run's final model (weights digest)
    privacy: str


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
    evaluation: Evaluation | None = None
    coverage: Section | None = None  # what DP covers, at which delta, by which accountant
    data: Section | None = None  # the declared task and what each site fitted on its own rows
    students: list[StudentModel] = field(default_factory=list)  # distilled from the final model

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
