"""Each client's record before any epsilon is computed: what it trained, refused and signed.

The signed ledger is the source; metrics.jsonl (the server's view) is only compared against it,
and used on its own, flagged as unsigned, for a client whose ledger was not found. Comparing the
two views is how the report shows a reviewer that the server's and the site's stories agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedmodel.privacy.ledger import NO_DP, LedgerEntry
from fedmodel.report.crosscheck import relative_difference
from fedmodel.report.ledgers import VerifiedLedger
from fedmodel.report.model import Refusal, RoundFailure
from fedmodel.report.runfolder import ClientRows

RECORD_TOLERANCE = 1e-3  # recorded vs recomputed epsilon: same accountant, so only float noise
MetricsRows = list[tuple[int, dict[str, Any]]]


@dataclass(frozen=True)
class TrainedRound:
    """One round a client trained in this run, with the mechanism parameters it recorded."""

    round: int
    mechanism: str | None
    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float | None
    delta: float | None
    dataset_size: int | None
    epsilon: float | None  # cumulative PRV as recorded; None = "no bound"
    epsilon_rdp: float | None


@dataclass
class Evidence:
    """One client's raw record, from its ledger or (unsigned) from metrics."""

    node: str
    partition_id: int | None = None
    trained: list[TrainedRound] = field(default_factory=list)  # this run only
    history: list[list[float]] = field(default_factory=list)  # whole ledger, every run
    refusals: list[Refusal] = field(default_factory=list)
    failures: list[RoundFailure] = field(default_factory=list)
    ledger: VerifiedLedger | None = None
    unprotected: list[int] = field(default_factory=list)  # rounds trained without DP noise
    warnings: list[str] = field(default_factory=list)
    # the last spend with the cumulative epsilon it recorded (any run, any kind; metrics: the
    # last trained row)
    last_spend: TrainedRound | None = None

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        """The verified ledger's entries; none for a site known only from metrics."""
        return self.ledger.entries if self.ledger is not None else ()


def gather_evidence(
    run_id: str, rows: ClientRows, ledgers: dict[str, VerifiedLedger]
) -> list[Evidence]:
    """One ``Evidence`` per node seen in the metrics or the ledgers, in node order."""
    out = []
    for node in sorted(set(rows) | set(ledgers), key=node_sort_key):
        node_rows = rows.get(node, [])
        if node in ledgers:
            ev = from_ledger(run_id, ledgers[node])
            compare_with_metrics(ev, node_rows)
        else:
            ev = from_metrics(node, node_rows)
        ev.partition_id = _partition_id(node_rows)
        _find_unprotected(ev, node_rows)
        ev.failures = [
            RoundFailure(rnd, str(c.get("reason") or "error"))
            for rnd, c in node_rows
            if c.get("status") == "error"
        ]
        _add_metrics_refusals(ev, node_rows)
        out.append(ev)
    return out


def node_sort_key(node: str) -> tuple[str, int]:
    """node-2 before node-10."""
    stem, _, num = node.rpartition("-")
    return (stem, int(num)) if num.isdigit() else (node, -1)


def from_ledger(run_id: str, ledger: VerifiedLedger) -> Evidence:
    """Spends and refusals from the signed entries; every other kind (commit, policy,
    rotation) records something else and is never read as a trained or refused round."""
    ev = Evidence(node=ledger.node, ledger=ledger)
    other_runs: set[str] = set()
    for entry in ledger.entries:
        same_run = entry.run_id == run_id
        if entry.spends:
            ev.history += [list(h) for h in entry.history]
            ev.last_spend = _trained_from_entry(entry)
            if same_run and entry.kind == "round" and entry.mechanism == NO_DP:
                ev.unprotected.append(entry.round)
            elif same_run and entry.kind == "round":
                ev.trained.append(_trained_from_entry(entry))
            elif not same_run:
                other_runs.add(entry.run_id)
        elif entry.kind == "refusal" and same_run:
            ev.refusals.append(
                Refusal(entry.round, entry.reason or "refused", entry.projected_epsilon, "ledger")
            )
    if other_runs:
        ev.warnings.append(
            f"{ledger.node}: ledger also holds rounds of runs {', '.join(sorted(other_runs))}; "
            "its epsilon covers the site's whole ledger"
        )
    return ev


def _trained_from_entry(e: LedgerEntry) -> TrainedRound:
    return TrainedRound(
        round=e.round,
        mechanism=e.mechanism,
        noise_multiplier=float(e.noise_multiplier or 0.0),
        sample_rate=float(e.sample_rate or 0.0),
        steps=int(e.history[0][2]) if e.history else int(e.steps or 0),  # DP-SGD's, no release
        max_grad_norm=e.max_grad_norm,
        delta=e.delta,
        dataset_size=e.dataset_size,
        epsilon=e.epsilon,
        epsilon_rdp=e.epsilon_rdp,
    )


def from_metrics(node: str, rows: MetricsRows) -> Evidence:
    """Fallback when no ledger was found: the server's record only, unsigned and said so."""
    ev = Evidence(node=node)
    for rnd, c in rows:
        if c.get("status") != "ok" or not _number(c.get("noise_multiplier")):
            continue
        trained = _trained_from_row(rnd, c)
        ev.trained.append(trained)
        ev.history.append([trained.noise_multiplier, trained.sample_rate, trained.steps])
    ev.warnings.append(f"{node}: no ledger found; history taken from metrics.jsonl (unsigned)")
    ev.last_spend = ev.trained[-1] if ev.trained else None
    return ev


def _trained_from_row(rnd: int, c: dict[str, Any]) -> TrainedRound:
    return TrainedRound(
        round=rnd,
        mechanism=None,
        noise_multiplier=float(c["noise_multiplier"]),
        sample_rate=float(c.get("sample_rate") or 0.0),
        steps=int(c.get("steps") or 0),
        max_grad_norm=_number(c.get("max_grad_norm")),
        delta=_number(c.get("delta")),
        dataset_size=None if c.get("num_examples") is None else int(c["num_examples"]),
        epsilon=_number(c.get("epsilon")),
        epsilon_rdp=_number(c.get("epsilon_rdp")),
    )


def _find_unprotected(ev: Evidence, rows: MetricsRows) -> None:
    """A round trained without noise has no DP guarantee at all (epsilon = inf): the ledger signs
    it (mechanism ``none``), and a round the server saw without noise counts too, signed or not
    (a site running other code may not have signed it)."""
    seen = [
        rnd for rnd, c in rows if c.get("status") == "ok" and not _number(c.get("noise_multiplier"))
    ]
    ev.unprotected = sorted({*ev.unprotected, *seen})
    if ev.unprotected:
        ev.warnings.append(
            f"{ev.node}: trained without DP noise in rounds {ev.unprotected}: "
            "no privacy guarantee (epsilon unbounded)"
        )


def compare_with_metrics(ev: Evidence, rows: MetricsRows) -> None:
    """The server's per-round record must tell the same story as the site's signed one."""
    served = {rnd: c for rnd, c in rows if c.get("status") == "ok"}
    signed = {t.round: t for t in ev.trained}
    if sorted(served) != sorted({*signed, *ev.unprotected}):
        ev.warnings.append(
            f"{ev.node}: rounds trained per metrics.jsonl {sorted(served)} differ from the "
            f"ledger's {sorted({*signed, *ev.unprotected})}"
        )
    for rnd in sorted(served.keys() & signed.keys()):
        # a reply carries both figures under the ledger's names, whichever accountant the run
        # used: compare each with its own
        for key in ("epsilon", "epsilon_rdp"):
            theirs = _number(served[rnd].get(key))
            ours = getattr(signed[rnd], key)
            if theirs is not None and ours is not None and not agrees(theirs, ours):
                ev.warnings.append(
                    f"{ev.node}: round {rnd}: metrics.jsonl {key} {theirs:.6g} differs from the "
                    f"ledger's {ours:.6g}"
                )


def agrees(recorded: float, recomputed: float) -> bool:
    return relative_difference(recorded, recomputed) <= RECORD_TOLERANCE


def _add_metrics_refusals(ev: Evidence, rows: MetricsRows) -> None:
    """Refusals the server saw that the ledger lacks are still listed, marked as unsigned."""
    signed = {r.round for r in ev.refusals}
    for rnd, c in rows:
        if c.get("status") == "refused" and rnd not in signed:
            projected = _number(c.get("projected_epsilon"))
            ev.refusals.append(
                Refusal(rnd, str(c.get("reason") or "refused"), projected, "metrics")
            )
    ev.refusals.sort(key=lambda r: r.round)


def _partition_id(rows: MetricsRows) -> int | None:
    for _, c in rows:
        pid = c.get("partition_id")
        if isinstance(pid, int) and pid >= 0:
            return pid
    return None


def _number(value: Any) -> float | None:
    """A float, or ``None`` for absent, non-numeric and zero ("DP off" rows record 0.0)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value == 0:
        return None
    return float(value)
