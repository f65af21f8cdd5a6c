"""Gather one run folder and its ledgers into a ``Report``.

Order matters: every ledger is verified before anything is computed, so a tampered or truncated
ledger stops the report (``ReportError``, exit 2) instead of producing a document with a caveat
nobody reads. After that, each client's epsilon is recomputed from the signed history, never
copied from what the site or the server wrote down; the recorded values are only compared. Caps
and policies come from the sites' signed ``policy`` entries (:mod:`fedmodel.report.signed`), and
what left each site from its signed spends (:mod:`fedmodel.report.released`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedmodel import __version__
from fedmodel.config import NEIGHBOURING_SENSITIVITY
from fedmodel.nodenames import NODE_NAME_RULE, is_node_name
from fedmodel.privacy.budget import cumulative_epsilon
from fedmodel.privacy.ledger import unbounded
from fedmodel.report import fmt
from fedmodel.report.audit import audit_summary, audit_warnings
from fedmodel.report.coding import coding_values
from fedmodel.report.crosscheck import DEFAULT_TOLERANCE, cross_check, gaussian_rdp_epsilon
from fedmodel.report.errors import ReportError
from fedmodel.report.evidence import Evidence, TrainedRound, agrees, gather_evidence
from fedmodel.report.ledgers import (
    Head,
    VerifiedLedger,
    check_against_own,
    find_ledgers,
    load_registry,
    run_folder_copies,
    run_folder_registry,
    verify,
)
from fedmodel.report.model import (
    SCHEMA_VERSION,
    Budget,
    CentralDP,
    ClientReport,
    DeltaFlag,
    EpsilonPoint,
    LedgerStatus,
    Report,
    SignedPolicy,
)
from fedmodel.report.narrative import (
    coverage_section,
    data_section,
    dpia_sections,
    membership_tpr_bound,
    threat_model_sections,
)
from fedmodel.report.privacy_audit import read_privacy_audit
from fedmodel.report.released import released_values, released_warnings
from fedmodel.report.runfolder import (
    ClientRows,
    RunRecords,
    client_rows,
    eval_rows,
    evaluation_settings,
    heads_by_node,
    read_run,
    round_metrics,
    run_identity,
    strategy_settings,
    transport_settings,
)
from fedmodel.report.signed import (
    cap_status,
    delta_flags,
    exceeds,
    node_file_warnings,
    signed_cap,
    signed_policies,
    spends_past_cap_in_force,
)
from fedmodel.report.students import read_students

DEFAULT_DELTA = 1e-5  # DPConfig's default, for a client that never trained and a run without dp
HISTORY_REJECTED = "ledger-history"  # the row reason of a reply whose ledger entries were refused


def collect_report(
    run_dir: Path,
    ledgers: Sequence[Path] | None = None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    registered_keys: Path | None = None,
    server_key: Path | None = None,
) -> Report:
    """Build the report model for ``run_dir`` from its ledger copies; ``ledgers`` (the sites'
    own) are cross-checked against them, or, in a run folder without copies, reported from.

    ``registered_keys``: the coordinator's registry (``<node>.ed25519.pub``); default: the run's
    own ``RUN_DIR/registered-keys``. Every ledger must verify under its node's registered key,
    not a key found on the site's own disk. ``server_key``: the server's published verify key,
    for the audit log (default: the run folder's copy of it).
    """
    run_dir = Path(run_dir)
    records = read_run(run_dir)
    rows, evals = client_rows(records.rounds), eval_rows(records.rounds)
    registry = (
        load_registry(registered_keys)
        if registered_keys is not None
        else run_folder_registry(run_dir)
    )
    verified = verified_ledgers(run_dir, ledgers, heads_by_node(rows, evals), registry)
    accountant = run_accountant(records)
    evidence = gather_evidence(records.run_id, rows, verified)
    clients = [build_client(ev, records, accountant, tolerance, rows, evals) for ev in evidence]
    run, transport = run_identity(records.info), transport_settings(records.info)
    evaluation = evaluation_settings(records.info)
    central = central_dp(records, tolerance)
    audit = audit_summary(run_dir, server_key)
    privacy, privacy_warnings = read_privacy_audit(
        run_dir, records.run_id, records.info.get("model_hash"), clients
    )
    students, student_warnings = read_students(run_dir, records.info.get("model_hash"))
    return Report(
        schema_version=SCHEMA_VERSION,
        generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
        generator=f"fedmodel {__version__}",
        run=run,
        transport=transport,
        strategy=strategy_settings(records.info),
        central_dp=central,
        clients=clients,
        rounds=[round_metrics(row) for row in records.rounds],
        crosscheck_tolerance=tolerance,
        all_within_tolerance=all(c.crosscheck.within_tolerance for c in clients)
        and (central.crosscheck is None or central.crosscheck.within_tolerance),
        any_budget_exceeded=any(c.budget_exceeded for c in clients),
        warnings=run_warnings(records)
        + [w for ev in evidence for w in ev.warnings]
        + name_warnings(evidence)
        + history_warnings(rows, evals)
        + central_dp_warnings(records, central)
        + audit_warnings(audit)
        + privacy_warnings
        + student_warnings,
        threat_model=threat_model_sections(transport, central),
        dpia=dpia_sections(run, transport, central, clients, accountant),
        audit=audit,
        privacy_audit=privacy,
        evaluation=evaluation,
        coverage=coverage_section(clients, accountant, evaluation),
        data=data_section(records.info),
        students=students,
    )


def run_accountant(records: RunRecords) -> str:
    """The accountant the run used (``dp.accountant``): the one the sites checked their caps
    with; the ledger signs its figure as ``epsilon`` (PRV) or ``epsilon_rdp`` (RDP)."""
    accountant = str(records.dp.get("accountant", "prv"))
    if accountant not in ("prv", "rdp"):
        raise ReportError(f"run.json: dp.accountant {accountant!r} is neither 'prv' nor 'rdp'")
    return accountant


def verified_ledgers(
    run_dir: Path,
    given: Sequence[Path] | None,
    heads: Mapping[str, Sequence[Head]],
    registry: Mapping[str, Path] | None,
) -> dict[str, VerifiedLedger]:
    """The run folder's copies, cross-checked with ``given`` (the sites' own ledgers); a run
    folder without copies is reported from ``given`` or ``RUN_DIR/nodes`` as before."""
    copies = run_folder_copies(run_dir)
    if not copies:
        return verify_all(find_ledgers(run_dir, given), heads, registry)
    held = verify_all(copies, heads, registry, copied=True)
    if not given:
        return held
    return check_against_own(held, verify_all(find_ledgers(run_dir, given), heads, registry))


def history_warnings(*row_sets: ClientRows) -> list[str]:
    """Replies the server refused because their ledger entries did not extend its copy: a
    site that rewrote or cut its history, or a relay that changed what it carried."""
    return [
        f"{node}: round {rnd}: reply rejected, its ledger entries do not extend the run "
        f"folder's copy ({row.get('reason')})"
        for rows in row_sets
        for node, node_rows in rows.items()
        for rnd, row in node_rows
        if str(row.get("reason") or "").startswith(f"{HISTORY_REJECTED}:")
    ]


def verify_all(
    paths: list[Path],
    heads: Mapping[str, Sequence[Head]],
    registry: Mapping[str, Path] | None = None,
    *,
    copied: bool = False,
) -> dict[str, VerifiedLedger]:
    """Verify every ledger before any is used; two ledgers claiming one node is also an error."""
    out: dict[str, VerifiedLedger] = {}
    for path in paths:
        ledger = verify(path, heads, registry, copied=copied)
        if ledger.node in out:
            raise ReportError(
                f"ledger {path}: node {ledger.node} already has ledger {out[ledger.node].path}"
            )
        out[ledger.node] = ledger
    return out


def name_warnings(evidence: list[Evidence]) -> list[str]:
    """Names come from the sites' replies and ledgers; one outside the node-name rule was never
    configured by an operator, so it is flagged (and never used as a path)."""
    return [
        f"node name {ev.node!r} breaks the node-name rule ({NODE_NAME_RULE}); it was taken "
        "as the site wrote it and not used to find any file"
        for ev in evidence
        if not is_node_name(ev.node)
    ]


def run_warnings(records: RunRecords) -> list[str]:
    out = list(records.warnings)
    if records.dp.get("enabled") is False:
        out.append("DP-SGD was disabled for this run: no record-level guarantee applies")
    if records.info.get("status") not in (None, "finished"):
        out.append(f"run status is {records.info.get('status')!r}, not finished")
    return out


# --- per-client numbers -----------------------------------------------------------------------


def build_client(
    ev: Evidence,
    records: RunRecords,
    accountant: str,
    tolerance: float,
    rows: ClientRows,
    evals: ClientRows,
) -> ClientReport:
    """Recompute the client's epsilon from its history and judge it against its signed cap."""
    delta = _delta(ev, records.dp)
    signed = cumulative_epsilon(ev.history, delta, "prv")
    signed_rdp = cumulative_epsilon(ev.history, delta, "rdp")
    # One noiseless release voids the guarantee, whatever the signed history says.
    no_bound = bool(ev.unprotected) or unbounded(ev.entries)
    eps, eps_rdp = (math.inf, math.inf) if no_bound else (signed, signed_rdp)
    agree = _records_agree(ev, delta, (eps, eps_rdp), no_bound)
    accounted = eps_rdp if accountant == "rdp" else eps
    policies = signed_policies(ev.entries)
    current = policies[-1] if policies else None
    cap = signed_cap(current)
    spent = _epsilon_against_cap(ev.history, delta, accounted, cap, accountant)
    exceeded = cap is not None and spent is not None and exceeds(spent, cap)
    past = spends_past_cap_in_force(ev.entries, policies, accountant)
    flags = delta_flags(ev.entries, policies)
    ev.warnings += _signed_findings(ev, current, past, flags)
    ev.warnings += released_warnings(ev.node, records.run_id, ev.entries, policies, rows, evals)
    return ClientReport(
        node=ev.node,
        partition_id=ev.partition_id,
        accountant=accountant,
        mechanism=_mechanism(ev.trained),
        epsilon=eps,
        epsilon_rdp=eps_rdp,
        delta=delta,
        noise_multipliers=_distinct(t.noise_multiplier for t in ev.trained),
        max_grad_norms=_distinct(t.max_grad_norm for t in ev.trained),
        sample_rates=_distinct(t.sample_rate for t in ev.trained),
        steps=sum(t.steps for t in ev.trained),
        dataset_size=next((t.dataset_size for t in reversed(ev.trained) if t.dataset_size), None),
        history=ev.history,
        history_source="ledger" if ev.ledger else "metrics (unsigned)",
        rounds=sorted([t.round for t in ev.trained] + ev.unprotected),
        unprotected_rounds=ev.unprotected,
        refusals=ev.refusals,
        failures=ev.failures,
        cap=cap,
        epsilon_against_cap=spent,
        remaining_epsilon=None if cap is None or spent is None else cap.epsilon - spent,
        budget_exceeded=exceeded,
        verdict=_verdict(cap, spent, exceeded, accountant, current is not None, past),
        crosscheck=cross_check(ev.history, delta, epsilon_prv=signed, tolerance=tolerance),
        membership_tpr_bound=membership_tpr_bound(accounted, delta),
        recorded_epsilon=_recorded(ev.last_spend, accountant),
        records_agree=agree,
        ledger=_ledger_status(ev.ledger),
        epsilon_by_round=[
            EpsilonPoint(t.round, e)
            for t in ev.trained
            if (e := _recorded(t, accountant)) is not None
        ],
        epsilon_accounted=accounted,
        cap_status=cap_status(current),
        policy=current,
        policy_entries=[p.entry for p in policies],
        spends_past_cap_in_force=past,
        unbounded=no_bound,
        delta_flags=flags,
        released=released_values(
            records.run_id, ev.entries, policies, accountant, copied=_copied(ev.ledger)
        )
        + coding_values(rows.get(ev.node, [])),
    )


def _copied(ledger: VerifiedLedger | None) -> bool:
    return ledger is not None and ledger.copied


def _recorded(t: TrainedRound | None, accountant: str) -> float | None:
    """The cumulative epsilon the site signed with a round, by the run's accountant."""
    if t is None:
        return None
    return t.epsilon_rdp if accountant == "rdp" else t.epsilon


def _signed_findings(
    ev: Evidence, current: SignedPolicy | None, past: list[int], flags: list[DeltaFlag]
) -> list[str]:
    """Warnings from the signed entries: node.toml disagreeing, caps passed, deltas too large."""
    node_file = ev.ledger.node_file if ev.ledger is not None else None
    out = node_file_warnings(ev.node, node_file, current)
    if past:
        out.append(
            f"{ev.node}: ledger entries {past} spent past the cap the site had signed when each "
            "was decided (its software did not enforce its own cap)"
        )
    out += [
        f"{ev.node}: entry {f.entry} (run {f.run_id}, round {f.round}, {f.kind}) uses delta "
        f"{fmt.num(f.delta)}, above 1/(10 n) = {fmt.num(f.limit)} for its {f.dataset_size} rows, "
        "and no signed max_delta allowed it"
        for f in flags
        if f.allowed_by is None
    ]
    return out


def _delta(ev: Evidence, dp: dict[str, Any]) -> float:
    """The delta the site accounted at (its last round); the run's configured delta otherwise."""
    deltas = [t.delta for t in ev.trained if t.delta]
    if len(set(deltas)) > 1:
        ev.warnings.append(f"{ev.node}: delta changed between rounds; reported at the last one")
    if deltas:
        return deltas[-1]
    return float(dp.get("delta") or DEFAULT_DELTA)


def _epsilon_against_cap(
    history: list[list[float]], delta: float, eps: float, cap: Budget | None, accountant: str
) -> float | None:
    """A cap is an (epsilon, delta) pair, so spend is measured at the cap's delta, by the run's
    accountant, as the site's budget check does; ``inf`` once a release had no DP."""
    if cap is None:
        return None
    if cap.delta == delta or math.isinf(eps):
        return eps
    return cumulative_epsilon(history, cap.delta, accountant)  # type: ignore[arg-type]


def _verdict(
    cap: Budget | None,
    spent: float | None,
    exceeded: bool,
    accountant: str,
    signed: bool,
    past: list[int],
) -> str:
    if cap is None or spent is None:
        why = "the site signed no cap" if signed else "no signed cap: the ledger has no policy"
        return f"budget exceeded: no ({why})"
    figure = (
        f"epsilon {fmt.num(spent)} ({accountant.upper()}, δ {fmt.num(cap.delta)}) "
        f"{'>' if exceeded else 'of'} signed cap {fmt.num(cap.epsilon)}, ledger entry {cap.entry}"
    )
    if math.isinf(spent):
        figure = f"epsilon unbounded (a release without DP) > signed cap {fmt.num(cap.epsilon)}"
    verdict = f"budget exceeded: {'YES' if exceeded else 'no'} ({figure})"
    if past:
        verdict += f"; entries {past} were decided past the cap then in force"
    return verdict


def _records_agree(
    ev: Evidence, delta: float, ours_at_delta: tuple[float, float], no_bound: bool
) -> bool:
    """Did the site record, with its last spend, the epsilon its whole history implies, by both
    accountants? Compared at that spend's own delta (a release after the last round counts)."""
    last = ev.last_spend
    if last is None:
        return True
    at = last.delta or delta
    if at == delta or no_bound:
        eps, eps_rdp = ours_at_delta
    else:
        eps = cumulative_epsilon(ev.history, at, "prv")
        eps_rdp = cumulative_epsilon(ev.history, at, "rdp")
    pairs = [(last.epsilon, eps), (last.epsilon_rdp, eps_rdp)]
    ok = all(
        (math.isinf(ours) if recorded is None else agrees(recorded, ours))
        for recorded, ours in pairs
    )
    if not ok:
        ev.warnings.append(
            f"{ev.node}: the site recorded epsilon {last.epsilon} (PRV) / {last.epsilon_rdp} "
            f"(RDP) with its last spend (round {last.round}); its history gives {eps:.6g} / "
            f"{eps_rdp:.6g}"
        )
    return ok


def _ledger_status(ledger: VerifiedLedger | None) -> LedgerStatus:
    if ledger is None:
        return LedgerStatus(None, False, None, 0, None, "none", False, 0)
    return LedgerStatus(
        path=str(ledger.path),
        verified=True,
        head_hash=ledger.head_hash,
        entry_count=len(ledger.entries),
        signer=ledger.signer,
        key_source=ledger.key_source,
        key_pinned=ledger.key_pinned,
        heads_checked=ledger.heads_checked,
        runs=sorted({e.run_id for e in ledger.entries}),
    )


def _mechanism(trained: list[TrainedRound]) -> str:
    names = sorted({t.mechanism for t in trained if t.mechanism})
    return ", ".join(names) if names else "dp-sgd/poisson-gaussian"


def _distinct(values) -> list[float]:
    return sorted({float(v) for v in values if v is not None})


# --- central DP -------------------------------------------------------------------------------

LEGACY_RELATION = "add-remove"  # runs recorded before the relation was stated: Flower's


def central_dp(records: RunRecords, tolerance: float) -> CentralDP:
    """Client-level DP as run.json records it, its epsilon recomputed from the recorded settings.

    The server credits no amplification (every sampled site, every round), so the mechanism is
    one Gaussian release per round at ``noise_multiplier`` divided by the stated relation's
    sensitivity. The recorded epsilon must be that mechanism's dp-accounting RDP figure (the
    method Flower's accountant uses, so they agree to float noise); PRV and PLD give the tighter
    figure and cross-check each other. ``rounds`` falls back to the rounds in metrics.jsonl.
    """
    cdp = records.info.get("central_dp")
    if not isinstance(cdp, dict) or not cdp.get("enabled", True):
        return CentralDP(used=False, settings={}, epsilon=None, delta=None, crosscheck=None)
    delta = _positive(cdp.get("delta"))
    noise = _positive(cdp.get("noise_multiplier"))
    relation = str(cdp.get("neighbouring", LEGACY_RELATION))
    scale = NEIGHBOURING_SENSITIVITY.get(relation)
    releases = _count(cdp.get("rounds", len(records.rounds)))
    recomputed, check = None, None
    if noise and delta and scale and releases is not None:
        recomputed = gaussian_rdp_epsilon(noise / scale, releases, delta) if releases else 0.0
        if releases:
            check = cross_check([[noise / scale, 1.0, releases]], delta, tolerance=tolerance)
    recorded = _number(cdp.get("epsilon"))
    return CentralDP(
        used=True,
        settings={
            k: v for k, v in cdp.items() if k not in ("epsilon", "delta", "accountant_state")
        },
        epsilon=recorded,
        delta=delta,
        crosscheck=check,
        neighbouring=relation,
        epsilon_recomputed=recomputed,
        records_agree=(
            recorded is not None and recomputed is not None and agrees(recorded, recomputed)
        ),
    )


def central_dp_warnings(records: RunRecords, central: CentralDP) -> list[str]:
    """The findings on client-level DP, each starting "central DP" so a reader can pick them."""
    if not central.used:
        return []
    cdp = records.info["central_dp"]
    out = []
    if "neighbouring" not in cdp:
        out.append(
            f"central DP: run.json does not state the neighbouring relation; read as "
            f"{LEGACY_RELATION} (Flower's), for which replace-one would state a larger epsilon"
        )
    if central.neighbouring not in NEIGHBOURING_SENSITIVITY:
        out.append(
            f"central DP: run.json states an unknown neighbouring relation "
            f"{central.neighbouring!r}; the recorded epsilon cannot be recomputed"
        )
    elif central.epsilon_recomputed is None:
        out.append(
            "central DP: the recorded epsilon cannot be recomputed "
            "(noise_multiplier, delta or rounds missing from run.json)"
        )
    elif not central.records_agree:
        out.append(
            f"central DP: run.json records client-level epsilon {fmt.num(central.epsilon)} "
            f"({central.neighbouring}); its settings give {fmt.num(central.epsilon_recomputed)} "
            "(dp-accounting RDP over the recorded rounds)"
        )
    if central.crosscheck is not None and not central.crosscheck.within_tolerance:
        out.append(
            "central DP: PRV and PLD differ by "
            f"{fmt.pct(central.crosscheck.relative_difference)} on the client-level mechanism"
        )
    return out


def _positive(value: Any) -> float | None:
    number = _number(value)
    return number if number is not None and number > 0 else None


def _number(value: Any) -> float | None:
    """A finite float, or ``None`` for absent and non-numeric values (booleans included)."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value
