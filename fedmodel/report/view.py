"""The report laid out as headline findings and tables of strings, shared by HTML and PDF.

Both documents render exactly these rows, so "same content" holds by construction and every
number is formatted by ``fmt`` once. Renderers only decide typography.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from fedmodel.report import fmt
from fedmodel.report.model import (
    CanaryFigures,
    ClientReport,
    PrivacyAuditSummary,
    Report,
    Section,
)


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
        *([report.data] if report.data else []),
        Heading("2. Privacy spent per site", "spend"),
        *([report.coverage] if report.coverage else []),
        spend_table(report),
        Plot("epsilon", "Cumulative ε per site after each round it trained in."),
        parameters_table(report),
        released_table(report),
        policy_table(report),
        *([delta] if (delta := delta_table(report)) else []),
        refusals_table(report),
        Heading("3. Can these records be trusted?", "trust"),
        crosscheck_table(report),
        ledger_table(report),
        audit_table(report) or Note(AUDIT_ABSENT),
        *warnings(report),
        Heading("4. Model quality", "quality"),
        *evaluation_blocks(report),
        Plot("accuracy", "Accuracy of the aggregated model after each round."),
        rounds_table(report),
        *([students_table(report)] if report.students else []),
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
    """The answers a reviewer came for, one line each."""
    clients = report.clients
    verified = sum(c.ledger.verified for c in clients)
    exceeded = [c.node for c in clients if c.budget_exceeded]
    off = [c.node for c in clients if not c.crosscheck.within_tolerance]
    accountants = ", ".join(sorted({c.accountant.upper() for c in clients})) or "PRV"
    return Section(
        title="Summary",
        bullets=[
            f"{len(clients)} sites; highest epsilon "
            f"{fmt.num(max((c.epsilon_accounted for c in clients), default=None))} "
            f"(Opacus {accountants}, the run's accountant).",
            "Budget exceeded (signed history against signed cap): "
            + (f"YES — {', '.join(exceeded)}" if exceeded else "no site"),
            "Released without DP (epsilon unbounded): "
            + (", ".join(c.node for c in clients if c.unbounded) or "no site"),
            f"Ledgers verified: {verified} of {len(clients)} "
            "(hash chain, signatures, server-recorded heads)",
            "PRV vs PLD cross-check within "
            f"{fmt.pct(report.crosscheck_tolerance, 0)}: "
            + (f"NO — {', '.join(off)}" if off else "all sites"),
            f"Central (client-level) DP: {central_summary(report)}; "
            f"warnings: {len(report.warnings)}",
            f"Model evaluated: {evaluation_summary(report)}",
        ],
    )


def evaluation_summary(report: Report) -> str:
    ev = report.evaluation
    if ev is None:
        return "not recorded"
    server = EVALUATIONS.get(ev.server, ev.server)
    return server + ("; federated evaluation from noised site counts" if ev.federated else "")


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
            fmt.num(c.epsilon_accounted),
            c.accountant.upper(),
            fmt.num(c.delta),
            cap_cell(c),
            fmt.num(c.remaining_epsilon),
            fmt.rounds(c.rounds),
            fmt.rounds(r.round for r in c.refusals),
            "YES" if c.budget_exceeded else "no",
        ]
        for c in report.clients
    ]
    return Table(
        title="Privacy spent per site (record-level DP)",
        header=[
            "Site",
            "ε",
            "Accountant",
            "δ",
            "Signed cap ε",
            "Left ε",
            "Rounds",
            "Refused",
            "Exceeded",
        ],
        rows=rows,
        note="ε by the accountant the run used, recomputed from each site's signed ledger "
        "history over all its spends (DP-SGD rounds and noised releases); 'Signed cap' is the "
        "cap in the site's last signed policy entry (a node.toml is never read for it); "
        "'Exceeded' judges the whole signed history against that cap at its δ, and 'Left' is "
        "cap minus that ε.",
        flagged=[i for i, c in enumerate(report.clients) if c.budget_exceeded or c.unbounded],
    )


def cap_cell(c: ClientReport) -> str:
    if c.cap is not None:
        return f"{fmt.num(c.cap.epsilon)} (entry {c.cap.entry})"
    return "none (signed)" if c.cap_status == "uncapped" else "no signed cap"


def released_table(report: Report) -> Table:
    """Every value that left each site in this run, how it was protected, where it was charged."""
    pairs = [(c, v) for c in report.clients for v in c.released]
    rows = [
        [
            c.node,
            v.label,
            PROTECTIONS.get(v.protection, v.protection),
            fmt.rounds(v.rounds),
            fmt.rounds(v.entries) if v.entries else "—",
            v.detail,
        ]
        for c, v in pairs
    ]
    return Table(
        title="What left each site",
        header=["Site", "Value", "Protection", "Rounds", "Ledger entries", "How"],
        rows=rows,
        note="From the sites' signed ledger entries (each spend names what it releases), "
        "compared with the releases the server recorded in metrics.jsonl; any difference is "
        "listed among the warnings. 'Model update on the wire' rows are the server's records: "
        "how each update was coded and the bytes that arrived."
        if rows
        else "No site's ledger records anything that left it in this run.",
        flagged=[i for i, (_, v) in enumerate(pairs) if v.flagged],
    )


PROTECTIONS = {
    "dp-sgd": "DP-SGD (record-level)",
    "gaussian": "Gaussian release (record-level)",
    "none": "NONE: no DP, ε unbounded",
    "public-configuration": "public configuration",
    "signed-record": "signed record, no DP",
    "post-processing": "post-processing of the DP update: no privacy cost",
}


def policy_table(report: Report) -> Table:
    """The cap and policy each site signed, and whether it spent past a cap then in force."""
    rows = [
        [
            c.node,
            cap_cell(c),
            fmt.num(c.cap.delta) if c.cap else "—",
            fmt.rounds(c.policy_entries) if c.policy_entries else "none",
            _policy_summary(c),
            fmt.rounds(c.spends_past_cap_in_force) if c.spends_past_cap_in_force else "none",
        ]
        for c in report.clients
    ]
    return Table(
        title="Signed caps and site policies",
        header=["Site", "Cap ε", "Cap δ", "Policy entries", "Policy now", "Spent past cap"],
        rows=rows,
        note="Each site signs its cap and its whole [policy] table into its ledger whenever "
        "either changes, before deciding under it; a spend is judged by the policy signed "
        "before it. 'Spent past cap': spends that took the site past the cap in force when "
        "they were decided (a site's own software would have refused them).",
        flagged=[i for i, c in enumerate(report.clients) if c.spends_past_cap_in_force],
    )


def _policy_summary(c: ClientReport) -> str:
    if c.policy is None:
        return "no signed policy"
    p = c.policy.policy
    parts = [
        f"require_dp {_yes(p.get('require_dp', True))}",
        f"max_delta {fmt.num(p.get('max_delta')) if p.get('max_delta') else '1/(10 n)'}",
        f"dataset size public {_yes(p.get('dataset_size_public', True))}",
        f"shares train metrics {_yes(p.get('share_train_metrics', False))}",
        f"shares eval counts {_yes(p.get('share_eval_metrics', False))}",
    ]
    return "; ".join(parts)


def _yes(value: Any) -> str:
    return "yes" if value is True else "no" if value is False else str(value)


def delta_table(report: Report) -> Table | None:
    """Spends whose delta is large for their rows; ``None`` when there are none."""
    pairs = [(c, f) for c in report.clients for f in c.delta_flags]
    if not pairs:
        return None
    rows = [
        [
            c.node,
            str(f.entry),
            f"{f.run_id} / {f.round}",
            fmt.num(f.delta),
            str(f.dataset_size),
            fmt.num(f.limit),
            "δ ≥ 1/n" if f.at_least_one_over_n else "δ > 1/(10 n)",
            f.allowed_by or "NOT allowed",
        ]
        for c, f in pairs
    ]
    return Table(
        title="Spends with a large δ",
        header=["Site", "Entry", "Run / round", "δ", "n", "1/(10 n)", "Finding", "Allowed by"],
        rows=rows,
        note="δ is the probability the guarantee fails outright; with n rows, δ ≥ 1/n permits "
        "publishing one record in the clear. A site allows at most 1/(10 n) unless its signed "
        "policy sets max_delta.",
        flagged=[i for i, (_, f) in enumerate(pairs) if f.at_least_one_over_n or not f.allowed_by],
    )


def parameters_table(report: Report) -> Table:
    rows = [
        [
            c.node,
            fmt.nums(c.noise_multipliers),
            fmt.nums(c.max_grad_norms),
            fmt.nums(c.sample_rates),
            str(c.steps),
            fmt.num(c.dataset_size),
            fmt.num(c.epsilon),
            fmt.num(c.epsilon_rdp),
        ]
        for c in report.clients
    ]
    return Table(
        title="DP-SGD mechanism and parameters",
        header=[
            "Site",
            "Noise σ",
            "Clip C",
            "Sample q",
            "Steps",
            "Records",
            "ε (PRV)",
            "ε (RDP)",
        ],
        rows=rows,
        note=f"Mechanism: {', '.join(sorted({c.mechanism for c in report.clients}))} "
        "(per-record gradients clipped to norm C, Gaussian noise of standard deviation σ·C, "
        "batches drawn by Poisson sampling with rate q). 'Steps': DP-SGD steps in this run. "
        "Both PRV and RDP are recomputed from the signed history (RDP is a looser upper bound); "
        "the spend table uses the one the run used, with which the sites checked their caps.",
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
        "'Site recorded' is the ε (by the run's accountant) the site signed into its ledger with "
        "its last spend; 'Agrees' compares both accountants' figures with the recomputation.",
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
        "intact, not who wrote it; `fedmodel report --server-key` and `fedmodel audit verify "
        "--key` check the key the coordinator published).",
    )


AUDIT_ABSENT = "This run folder has no server audit log (audit.jsonl)."


def evaluation_blocks(report: Report) -> list[Block]:
    """Where the model was evaluated; an oracle on the sites' rows is called out."""
    ev = report.evaluation
    if ev is None:
        return []
    table = _kv(
        "Where the model was evaluated",
        [
            ("Server evaluation", EVALUATIONS.get(ev.server, ev.server)),
            ("Server's data", ev.server_data),
            ("Federated evaluation", "yes: noised counts from each site" if ev.federated else "no"),
            ("Sites' data", ev.federated_data),
        ],
        flagged=[0, 1] if ev.oracle else [],
    )
    if not ev.oracle:
        return [table]
    return [table, Note(ORACLE_ALERT, alert=True)]


EVALUATIONS = {
    "public": "public test split held by the coordinator",
    "none": "none",
    "oracle": "SIMULATION-ONLY ORACLE on the sites' own held-out rows",
}
ORACLE_ALERT = (
    "SIMULATION-ONLY ORACLE: the server accuracy below was measured on the sites' own held-out "
    "rows, which no coordinator holds in a deployment. It is a simulation yardstick, not a "
    "privacy-preserving evaluation, and must not be quoted as one."
)


def rounds_table(report: Report) -> Table:
    recorded = {k for r in report.rounds for k in r.server}
    keys = [k for k in ("accuracy", "loss", "f1", "auroc") if k in recorded]
    federated = any(r.federated for r in report.rounds)
    fed_keys = ["accuracy", "loss"] if federated else []
    rows = [
        [
            str(r.round),
            *(fmt.num(r.server.get(k)) for k in keys),
            *(fmt.num(r.federated.get(k)) for k in fed_keys),
            ", ".join(r.participants) or "none",
            ", ".join(r.refused) or "—",
        ]
        for r in report.rounds
    ]
    oracle = report.evaluation is not None and report.evaluation.oracle
    prefix = "Oracle " if oracle else ""
    return Table(
        title="Evaluation per round",
        header=[
            "Round",
            *(f"{prefix}{k.capitalize()}" for k in keys),
            *(f"Federated {k} (noised)" for k in fed_keys),
            "Trained",
            "Refused",
        ],
        rows=rows,
        note="Federated columns: the sites' noised evaluation counts summed by the server."
        if federated
        else "",
    )


def students_table(report: Report) -> Table:
    """Each distilled student beside its teacher: accuracy, agreement, size, speed."""
    rows = [
        [
            f"{s.name} ({s.architecture})",
            f"{fmt.pct(s.accuracy)} / {fmt.pct(s.teacher_accuracy)}",
            fmt.pct(s.agreement),
            f"{s.parameters:,} / {s.teacher_parameters:,}",
            f"{s.bytes_on_disk:,} / {s.teacher_bytes_on_disk:,}",
            f"{s.ms_per_batch:.2f} / {s.teacher_ms_per_batch:.2f}",
            f"{s.distill_rows:,} / {s.eval_rows:,}",
        ]
        for s in report.students
    ]
    first = report.students[0]
    return Table(
        title="Distilled students (student / teacher)",
        header=[
            "Student",
            "Accuracy",
            "Agreement",
            "Parameters",
            "Bytes",
            f"CPU ms / batch of {first.batch_size}",
            "Rows learned / evaluated",
        ],
        rows=rows,
        note=f"Trained on the final model's soft labels over {first.public_data}; accuracy and "
        "agreement with the teacher on public rows disjoint from those it learned from. "
        f"{first.privacy[:1].upper()}{first.privacy[1:]}.",
        flagged=[i for i, s in enumerate(report.students) if not s.matches_model],
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
