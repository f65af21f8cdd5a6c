"""The report laid out as headline findings and tables of strings, shared by HTML and PDF.

Both documents render exactly these rows, so "same content" holds by construction and every
number is formatted by ``fmt`` once. Renderers only decide typography.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from fedmodel.report import fmt
from fedmodel.report.model import CanaryFigures, PrivacyAuditSummary, Report, Section


@dataclass(frozen=True)
class Table:
    """A titled grid of already-formatted cells; ``flagged`` rows are drawn as alerts."""

    kind: ClassVar[str] = "table"
    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""
    flagged: list[int] = field(default_factory=list)
    key_value: bool = False  # two columns, label then value


@dataclass(frozen=True)
class Heading:
    """A numbered chapter heading."""

    kind: ClassVar[str] = "heading"
    title: str
    anchor: str


@dataclass(frozen=True)
class Plot:
    """A reference to one of ``plots.render_plots``'s PNGs, by name."""

    kind: ClassVar[str] = "plot"
    name: str
    caption: str


@dataclass(frozen=True)
class Note:
    """A free-standing paragraph; ``alert`` ones are drawn to catch the eye."""

    kind: ClassVar[str] = "note"
    text: str
    alert: bool = False


Block = Heading | Section | Table | Plot | Note


def document(report: Report) -> list[Block]:
    """Every block of the report in reading order: the one layout HTML and PDF both walk."""
    return [
        summary(report),
        Heading("1. Run identity", "run"),
        run_table(report),
        Heading("2. Privacy spent per site", "spend"),
        spend_table(report),
        Plot("epsilon", "Cumulative ε per site after each round it trained in."),
        parameters_table(report),
        refusals_table(report),
        Heading("3. Can these records be trusted?", "trust"),
        crosscheck_table(report),
        ledger_table(report),
        audit_table(report) or Note(AUDIT_ABSENT),
        *warnings(report),
        Heading("4. Model quality", "quality"),
        Plot("accuracy", "Accuracy of the aggregated model after each round."),
        rounds_table(report),
        Heading("5. Transport, aggregation and threat model", "transport"),
        transport_table(report),
        *report.threat_model,
        Heading("6. Central / client-level DP", "central"),
        central_dp_table(report) or Note(CENTRAL_DP_ABSENT),
        Heading("7. Data protection impact assessment (GDPR art. 35)", "dpia"),
        *report.dpia,
        Heading("8. Empirical privacy audit", "empirical"),
        *privacy_audit_blocks(report),
    ]


def warnings(report: Report) -> list[Block]:
    if not report.warnings:
        return [Note("No inconsistencies found between ledgers, metrics and recomputation.")]
    return [Section(title="Warnings", bullets=list(report.warnings))]


def summary(report: Report) -> Section:
    """The answers a reviewer came for, in four lines."""
    clients = report.clients
    verified = sum(c.ledger.verified for c in clients)
    exceeded = [c.node for c in clients if c.budget_exceeded]
    off = [c.node for c in clients if not c.crosscheck.within_tolerance]
    return Section(
        title="Summary",
        bullets=[
            f"{len(clients)} sites; highest epsilon "
            f"{fmt.num(max((c.epsilon for c in clients), default=None))} (Opacus PRV).",
            "Budget exceeded: " + (f"YES — {', '.join(exceeded)}" if exceeded else "no site"),
            f"Ledgers verified: {verified} of {len(clients)} "
            "(hash chain, signatures, server-recorded heads)",
            "PRV vs PLD cross-check within "
            f"{fmt.pct(report.crosscheck_tolerance, 0)}: "
            + (f"NO — {', '.join(off)}" if off else "all sites"),
            f"Central (client-level) DP: {central_summary(report)}; "
            f"warnings: {len(report.warnings)}",
        ],
    )


def central_summary(report: Report) -> str:
    """Used or not, and if used whether its recorded epsilon survived recomputation."""
    cdp = report.central_dp
    if not cdp.used:
        return "not used"
    verdict = "agrees with" if cdp.records_agree else "does NOT agree with"
    return f"used, ε {fmt.num(cdp.epsilon)} ({cdp.neighbouring}), which {verdict} its recomputation"


def run_table(report: Report) -> Table:
    r = report.run
    return _kv(
        "",  # the chapter heading already says "Run identity"
        [
            ("Run id", r.run_id),
            ("Scenario", r.scenario),
            ("Engine", r.engine),
            ("Status", r.status),
            ("Started (UTC)", r.started),
            ("Finished (UTC)", r.finished),
            ("Config hash", r.config_hash),
            ("Model hash", r.model_hash),
            ("Code version", r.code_version),
            ("Report generated", f"{report.generated_at} by {report.generator}"),
        ],
    )


def spend_table(report: Report) -> Table:
    rows = [
        [
            c.node,
            fmt.num(c.epsilon),
            fmt.num(c.delta),
            fmt.num(c.cap.epsilon) if c.cap else "no cap",
            fmt.num(c.remaining_epsilon),
            fmt.rounds(c.rounds),
            fmt.rounds(r.round for r in c.refusals),
            "YES" if c.budget_exceeded else "no",
        ]
        for c in report.clients
    ]
    return Table(
        title="Privacy spent per site (record-level DP-SGD)",
        header=["Site", "ε (PRV)", "δ", "Cap ε", "Left ε", "Rounds", "Refused", "Exceeded"],
        rows=rows,
        note="ε recomputed from each site's signed ledger history over all its rounds; "
        "'Left' is cap minus ε measured at the cap's δ.",
        flagged=[i for i, c in enumerate(report.clients) if c.budget_exceeded],
    )


def parameters_table(report: Report) -> Table:
    rows = [
        [
            c.node,
            c.accountant.upper(),
            fmt.nums(c.noise_multipliers),
            fmt.nums(c.max_grad_norms),
            fmt.nums(c.sample_rates),
            str(c.steps),
            fmt.num(c.dataset_size),
            fmt.num(c.epsilon_rdp),
        ]
        for c in report.clients
    ]
    return Table(
        title="DP-SGD mechanism and parameters",
        header=[
            "Site",
            "Accountant",
            "Noise σ",
            "Clip C",
            "Sample q",
            "Steps",
            "Records",
            "ε (RDP)",
        ],
        rows=rows,
        note=f"Mechanism: {', '.join(sorted({c.mechanism for c in report.clients}))} "
        "(per-record gradients clipped to norm C, Gaussian noise of standard deviation σ·C, "
        "batches drawn by Poisson sampling with rate q). 'Accountant' is the run's configured "
        "one; ε is always recomputed with PRV. RDP is a looser upper bound, for comparison.",
    )


def crosscheck_table(report: Report) -> Table:
    rows = [
        [
            c.node,
            fmt.num(c.crosscheck.epsilon_prv, 6),
            fmt.num(c.crosscheck.epsilon_pld, 6),
            fmt.pct(c.crosscheck.relative_difference),
            "yes" if c.crosscheck.within_tolerance else "NO",
            fmt.num(c.recorded_epsilon, 6),
            "yes" if c.records_agree else "NO",
        ]
        for c in report.clients
    ]
    return Table(
        title="Cross-check: Opacus PRV vs Google dp-accounting PLD",
        header=["Site", "ε PRV", "ε PLD", "Difference", "Within tol.", "Site recorded", "Agrees"],
        rows=rows,
        note=f"Tolerance {fmt.pct(report.crosscheck_tolerance, 0)} relative difference. "
        "'Site recorded' is the ε the site signed into its ledger after its last round.",
        flagged=[
            i
            for i, c in enumerate(report.clients)
            if not (c.crosscheck.within_tolerance and c.records_agree)
        ],
    )


def refusals_table(report: Report) -> Table:
    rows = [
        [c.node, str(r.round), r.reason, fmt.num(r.projected_epsilon), r.source]
        for c in report.clients
        for r in c.refusals
    ]
    rows += [
        [c.node, str(f.round), f.reason, "—", "metrics (error)"]
        for c in report.clients
        for f in c.failures
    ]
    return Table(
        title="Refused and failed rounds",
        header=["Site", "Round", "Reason", "Projected ε", "Source"],
        rows=rows,
        note="" if rows else "No site refused or failed a round.",
    )


def ledger_table(report: Report) -> Table:
    rows = [
        [
            c.node,
            "verified" if c.ledger.verified else "NO LEDGER",
            str(c.ledger.entry_count),
            fmt.short_hash(c.ledger.head_hash),
            str(c.ledger.heads_checked),
            fmt.short_hash(c.ledger.signer),
            "node key" if c.ledger.key_pinned else "signer.pub" if c.ledger.verified else "—",
        ]
        for c in report.clients
    ]
    return Table(
        title="Privacy ledgers",
        header=["Site", "Status", "Entries", "Head", "Heads", "Signer", "Key"],
        rows=rows,
        note="Hash chain, Ed25519 signatures and entry contents checked. 'Heads': ledger heads "
        "the server recorded during the run, all found on the chain (they catch a ledger cut "
        "back or re-signed by its own site). 'Key': the public key that verified the "
        "signatures: the node's signing key named in its node.toml, or the ledger's own "
        "signer.pub. Both sit on the site's disk; the server heads are the independent check.",
        flagged=[i for i, c in enumerate(report.clients) if not c.ledger.verified],
    )


def audit_table(report: Report) -> Table | None:
    """The server's signed audit log; ``None`` when the run folder has none."""
    a = report.audit
    if a is None:
        return None
    pairs: list[tuple[str, Any]] = [
        ("Verification", "sound" if a.verified else f"BROKEN — {a.first_break}"),
        ("Entries", a.entries),
        ("Updates accepted", a.accepted),
        ("Updates rejected", a.rejected),
        ("Refusals", a.refused),
        ("Errors (no reply)", a.errors),
        ("Checkpoints", a.checkpoints),
        ("Signer", fmt.short_hash(a.signer)),
        ("Key", a.key_source),
    ]
    return _kv(
        "Server audit log (audit.jsonl)",
        pairs,
        flagged=[] if a.verified else [0],
        note="Every decision the server took, hash-chained and signed with its Ed25519 key: each "
        "update accepted or rejected (with the reason), each refusal, round and checkpoint. "
        "'Key': the public key that verified it (the run folder's own key shows the log is "
        "intact, not who wrote it; `fedmodel audit verify --key` checks the published one).",
    )


AUDIT_ABSENT = "This run folder has no server audit log (audit.jsonl)."


def rounds_table(report: Report) -> Table:
    recorded = {k for r in report.rounds for k in r.server}
    keys = [k for k in ("accuracy", "loss", "f1", "auroc") if k in recorded]
    rows = [
        [
            str(r.round),
            *(fmt.num(r.server.get(k)) for k in keys),
            ", ".join(r.participants) or "none",
            ", ".join(r.refused) or "—",
        ]
        for r in report.rounds
    ]
    return Table(
        title="Server evaluation per round",
        header=["Round", *(k.capitalize() for k in keys), "Trained", "Refused"],
        rows=rows,
    )


def transport_table(report: Report) -> Table:
    t = report.transport
    pairs: list[tuple[str, Any]] = [
        ("TLS", fmt.flag(t.tls)),
        ("Node authentication", fmt.flag(t.node_auth)),
        ("Sealed updates", fmt.flag(t.sealed_updates)),
        ("Secure aggregation", fmt.flag(t.secure_aggregation)),
    ]
    strategy = sorted(report.strategy.items(), key=lambda kv: (kv[0] != "name", kv[0]))
    pairs += [(f"Strategy: {k}", v) for k, v in strategy]
    return _kv("Transport and aggregation", pairs)


def central_dp_table(report: Report) -> Table | None:
    """``None`` when central DP was not used; the renderers then print one sentence instead."""
    cdp = report.central_dp
    if not cdp.used:
        return None
    relation = RELATIONS.get(str(cdp.neighbouring), "unknown: cannot be recomputed")
    pairs: list[tuple[str, Any]] = [("Neighbouring relation", f"{cdp.neighbouring} ({relation})")]
    pairs += [(k, v) for k, v in cdp.settings.items() if k != "neighbouring"]
    recorded_row = len(pairs)
    pairs += [
        ("ε (recorded by the server)", fmt.num(cdp.epsilon, 6)),
        ("ε recomputed (dp-accounting RDP)", fmt.num(cdp.epsilon_recomputed, 6)),
        ("Recorded ε agrees", "yes" if cdp.records_agree else "NO"),
        ("δ", fmt.num(cdp.delta)),
    ]
    flagged = [] if cdp.records_agree else [recorded_row, recorded_row + 2]
    if cdp.crosscheck:
        cc = cdp.crosscheck
        pairs += [
            ("ε recomputed (PRV)", fmt.num(cc.epsilon_prv, 6)),
            ("ε recomputed (PLD)", fmt.num(cc.epsilon_pld, 6)),
            ("PRV vs PLD difference", fmt.pct(cc.relative_difference)),
        ]
        flagged += [] if cc.within_tolerance else [len(pairs) - 1]
    return _kv(
        "Central / client-level DP (server side)",
        pairs,
        flagged=flagged,
        note="The recorded ε is recomputed here from the recorded noise, δ, rounds and "
        "relation alone: one Gaussian release per round at noise_multiplier / sensitivity "
        "(no amplification credited), with dp-accounting's RDP accountant (Flower's method); "
        "PRV and PLD give the tighter figure for the same mechanism.",
    )


RELATIONS = {
    "replace-one": "one site's update replaced by any other; the mean moves by up to 2C/m",
    "add-remove": "one site's update added or removed; the mean moves by up to C/m",
}


CENTRAL_DP_ABSENT = (
    "No central (client-level) DP was used in this run: the server aggregated the sites' "
    "DP-SGD updates without Flower's DifferentialPrivacy clipping wrappers, so the only formal "
    "guarantee is the record-level one above; a site's participation itself is not hidden."
)


def _kv(
    title: str, pairs: list[tuple[str, Any]], *, note: str = "", flagged: list[int] | None = None
) -> Table:
    rows = [[label, "—" if value is None else str(value)] for label, value in pairs]
    return Table(
        title=title, header=["", ""], rows=rows, key_value=True, note=note, flagged=flagged or []
    )


def privacy_audit_blocks(report: Report) -> list[Block]:
    """Membership inference and, when run, the canary audit beside the accounted epsilon."""
    pa = report.privacy_audit
    if pa is None:
        return [Note(PRIVACY_AUDIT_ABSENT)]
    blocks: list[Block] = [membership_table(pa)]
    blocks.append(canary_table(pa) if pa.canaries else Note(CANARY_ABSENT))
    return blocks


def membership_table(pa: PrivacyAuditSummary) -> Table:
    fpr = pa.attacks[0].fpr if pa.attacks else 0.01
    rows = [
        [a.attack, fmt.num(a.auc, 3), fmt.num(a.tpr_at_fpr, 3), fmt.num(pa.tpr_bound, 3)]
        for a in pa.attacks
    ]
    return Table(
        title=f"Membership inference on {pa.node}'s records (final model)",
        header=["Attack", "AUC", f"TPR at {fmt.pct(fpr, 0)} FPR", "Bound from ε"],
        rows=rows,
        note=f"{pa.members} of the site's training records against {pa.non_members} held-out "
        "records no site trained on, drawn class by class to match the site's labels. 'loss': "
        "the final model's loss; 'calibrated': loss under a reference model trained (as the "
        "site trained) on other held-out rows minus loss under the final model. AUC 0.5 is "
        "guessing. 'Bound from ε': the highest TPR any attack can reach at that FPR under the "
        f"site's ε {fmt.num(pa.epsilon_site)} (e^ε·FPR + δ)."
        + ("" if pa.matches_run else " Made for another run or final model."),
        flagged=[
            i
            for i, a in enumerate(pa.attacks)
            if pa.tpr_bound is not None and a.tpr_at_fpr > pa.tpr_bound
        ],
    )


def canary_table(pa: PrivacyAuditSummary) -> Table:
    rows = [
        [
            "noise off (control)"
            if c.noise_off
            else f"as run (σ {fmt.num(c.noise_multiplier_trained)})",
            str(c.canaries),
            f"{c.correct} / {c.guesses}",
            f"{fmt.num(c.epsilon_lower_bound, 3)} ({fmt.pct(c.confidence, 0)})",
            fmt.num(c.epsilon_ceiling, 3),
            fmt.num(c.epsilon_accounted, 4),
            _canary_verdict(c),
        ]
        for c in pa.canaries
    ]
    return Table(
        title=f"Canary audit of {pa.node}'s DP-SGD (one training run)",
        header=[
            "Training",
            "m",
            "Right / guesses",
            "ε ≥ (confidence)",
            "At most",
            "ε accounted",
            "Verdict",
        ],
        rows=rows,
        note="Steinke, Nasr & Jagielski (2023): m canaries, each included with probability 1/2, "
        "trained through the site's own sampling, clipping and noise; the highest-scoring are "
        "guessed 'in'. 'ε ≥' is the lower bound the right guesses prove at the stated "
        "confidence, to set against 'ε accounted', the accountant's ε for the mechanism replayed "
        "(the site's noise, sampling rate and steps in this run); 'At most' is "
        "the bound had every guess been right. A bound above the accounted ε refutes it: with "
        "the configured noise that means the implementation or its accounting is wrong; the "
        "noise-off control should refute it, showing the audit can.",
        flagged=[i for i, c in enumerate(pa.canaries) if c.refutes_claim and not c.noise_off],
    )


def _canary_verdict(c: CanaryFigures) -> str:
    if c.noise_off:
        return "refuted, as it should be" if c.refutes_claim else "not refuted: audit too weak"
    return "REFUTED" if c.refutes_claim else "consistent"


PRIVACY_AUDIT_ABSENT = (
    "No empirical privacy audit for this run folder (privacy-audit.json): run "
    "`fedmodel audit privacy RUN_DIR` to attack the final model, with --canaries to test the "
    "accountant's ε with a canary audit."
)
CANARY_ABSENT = (
    "No canary audit yet: `fedmodel audit privacy RUN_DIR --canaries 1000` trains the site's "
    "DP-SGD once more with canaries and sets the ε it proves against the accounted one."
)
