"""What left each site in this run, and how each value was protected, from its signed ledger.

Every value that leaves a site is accounted for in one of three ways: a DP spend (the model
update and each Gaussian release, named in the spend entry's ``releases``), public configuration
(the accounting parameters a reply carries), or a signed ledger record (heads, refusals). This
module lists them per site from the ledger, never from what the server wrote down;
metrics.jsonl's ``released`` (and any value a row carries) is only compared with it, and a
disagreement is a warning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fedmodel.privacy.ledger import NO_DP, LedgerEntry
from fedmodel.report import fmt
from fedmodel.report.model import ReleasedValue, SignedPolicy
from fedmodel.report.runfolder import ClientRows
from fedmodel.report.signed import policy_in_force

MODEL_UPDATE, TRAIN_METRICS, EVAL_COUNTS = "model-update", "train-metrics", "eval-counts"
ACCOUNTING, HEADS, REFUSALS = "accounting-parameters", "ledger-heads", "refusals"
LEDGER_ENTRIES = "ledger-entries"
ACCOUNTANTS = {
    "prv": "Opacus PRV accountant (the ledger's `epsilon`)",
    "rdp": "Opacus RDP accountant (the ledger's `epsilon_rdp`)",
}
# what a metrics row may carry only when the signed spend released it, and what it withholds
# when the site's signed policy keeps its dataset size private
TRAIN_METRIC_KEYS = ("num_examples", "train_loss", "train_accuracy")
SIZE_REVEALING_KEYS = ("sample_rate", "steps", "epsilon", "epsilon_rdp")


def accountant_name(accountant: str) -> str:
    return ACCOUNTANTS.get(accountant, f"accountant {accountant!r}")


@dataclass
class _Group:
    value: ReleasedValue
    rounds: set[int] = field(default_factory=set)
    entries: list[int] = field(default_factory=list)


def released_values(
    run_id: str,
    entries: Sequence[LedgerEntry],
    policies: Sequence[SignedPolicy],
    accountant: str,
    *,
    copied: bool = False,
) -> list[ReleasedValue]:
    """Every kind of value that left the site in run ``run_id``, grouped over rounds;
    ``copied``: ``entries`` are the run folder's copy, so each of them left the site too."""
    mine = [e for e in entries if e.run_id == run_id]
    commits = {e.spend: e for e in entries if e.kind == "commit"}
    groups: dict[tuple[Any, ...], _Group] = {}
    for spend in (e for e in mine if e.spends):
        commit = commits.get(spend.hash)
        if commit is not None and commit.update_sha256 is None:
            continue  # charged, but the site recorded that nothing left
        for name in spend.releases:
            value = _spend_value(name, spend, accountant, committed=commit is not None)
            _add(groups, value, spend)
    out = [_merged(g) for g in groups.values()]
    out += _records(mine, entries, policies)
    if copied and entries:
        out.append(_ledger_entries(mine, entries))
    return out


def _ledger_entries(mine: list[LedgerEntry], entries: Sequence[LedgerEntry]) -> ReleasedValue:
    """The signed entries the replies carried to the server's copy of the ledger."""
    kinds = sorted({e.kind for e in entries})
    return _value(
        LEDGER_ENTRIES,
        "Signed ledger entries",
        "signed-record",
        f"The site's {len(entries)} signed ledger entries up to its last reply ({', '.join(kinds)}"
        "), each sent once, with the first reply after it was written, as the site signed it: "
        "privacy spends, refusals, commits and the site's signed cap and policy, i.e. its "
        "accounting and configuration (every run so far), never a record.",
        rounds=[e.round for e in mine if e.spends or e.kind == "refusal"],
        entries=[e.seq for e in entries],
    )


def _add(groups: dict[tuple[Any, ...], _Group], value: ReleasedValue, spend: LedgerEntry) -> None:
    key = (value.what, value.protection, value.mechanism, value.noise_multiplier, value.detail)
    group = groups.setdefault(key, _Group(value))
    group.rounds.add(spend.round)
    group.entries.append(spend.seq)


def _merged(group: _Group) -> ReleasedValue:
    v = group.value
    return ReleasedValue(
        what=v.what,
        label=v.label,
        protection=v.protection,
        rounds=sorted(group.rounds),
        entries=sorted(group.entries),
        detail=v.detail,
        mechanism=v.mechanism,
        noise_multiplier=v.noise_multiplier,
        flagged=v.flagged,
    )


def _spend_value(
    name: str, spend: LedgerEntry, accountant: str, *, committed: bool
) -> ReleasedValue:
    tail = "" if committed else " No commit entry: counted as spent; whether it left is unknown."
    if spend.mechanism == NO_DP:
        return _value(
            name,
            f"{_label(name)} WITHOUT DP",
            "none",
            "Released without DP noise (the site's policy let the run train without DP): no "
            "guarantee, the site's epsilon is unbounded from here on." + tail,
            mechanism=NO_DP,
            flagged=True,
        )
    if name == MODEL_UPDATE:
        noise, rate, steps = spend.history[0]
        return _value(
            name,
            "Model update",
            "dp-sgd",
            f"DP-SGD ({spend.mechanism}), record-level: per-record gradients clipped to norm C "
            f"{fmt.num(spend.max_grad_norm)}, Gaussian noise σ {fmt.num(noise)}·C, Poisson "
            f"sampling rate {fmt.num(rate)}, {int(steps)} steps per round; accounted by the "
            f"{accountant_name(accountant)} over the site's whole ledger." + tail,
            mechanism=spend.mechanism,
            noise=noise,
        )
    sigma = _release_sigma(name, spend)
    what = {
        TRAIN_METRICS: "noised training example count, accuracy and clipped loss of the model "
        "update, released with its round",
        EVAL_COUNTS: "noised counts of held-out rows, correct predictions and clipped loss sum "
        "(federated evaluation)",
    }.get(name, f"a release named {name!r}")
    mechanism = "gaussian" if name == TRAIN_METRICS else spend.mechanism
    return _value(
        name,
        _label(name),
        "gaussian",
        f"Gaussian release of {what}, σ {fmt.num(sigma)} per unit of sensitivity, "
        "record-level; charged to the ledger in the entries listed." + tail,
        mechanism=mechanism,
        noise=sigma,
    )


def _release_sigma(name: str, spend: LedgerEntry) -> float | None:
    """A Gaussian release is one accountant entry ``(sigma, 1.0, 1)``; a training-metrics one
    follows its round's DP-SGD entry, an evaluation one is the spend's only entry."""
    candidates = spend.history[1:] if name == TRAIN_METRICS else spend.history
    found = [h[0] for h in candidates if h[1] == 1.0 and h[2] == 1]
    return float(found[0]) if found else spend.noise_multiplier


def _label(name: str) -> str:
    return {
        MODEL_UPDATE: "Model update",
        TRAIN_METRICS: "Training metrics (noised)",
        EVAL_COUNTS: "Evaluation counts (noised)",
    }.get(name, name)


def _value(
    what: str,
    label: str,
    protection: str,
    detail: str,
    *,
    mechanism: str | None = None,
    noise: float | None = None,
    flagged: bool = False,
    rounds: Sequence[int] = (),
    entries: Sequence[int] = (),
) -> ReleasedValue:
    return ReleasedValue(
        what=what,
        label=label,
        protection=protection,
        rounds=sorted(set(rounds)),
        entries=list(entries),
        detail=detail,
        mechanism=mechanism,
        noise_multiplier=None if noise is None else float(noise),
        flagged=flagged,
    )


def _records(
    mine: list[LedgerEntry], entries: Sequence[LedgerEntry], policies: Sequence[SignedPolicy]
) -> list[ReleasedValue]:
    """What every reply carries besides spends: accounting parameters, heads, refusals."""
    out = []
    # a DP-SGD reply carries its accounting; an evaluation reply only its noised counts
    dp_rounds = [e for e in mine if e.kind == "round" and e.mechanism != NO_DP]
    if dp_rounds:
        out.append(_accounting(dp_rounds, policies))
    refusals = [e for e in mine if e.kind == "refusal"]
    replies = [e for e in mine if e.spends] + refusals
    if replies:
        out.append(
            _value(
                HEADS,
                "Ledger heads",
                "signed-record",
                f"The hash and entry count of the site's ledger, with each of its {len(replies)} "
                "replies: they reveal how many entries the ledger holds, no record.",
                rounds=[e.round for e in replies],
            )
        )
    if refusals:
        out.append(
            _value(
                REFUSALS,
                "Signed refusals",
                "signed-record",
                "The reason and the projected epsilon, signed by the site; no update. The "
                "refusal's timing tells the server the site's cap or policy stopped it.",
                rounds=[e.round for e in refusals],
                entries=[e.seq for e in refusals],
            )
        )
    return out


def _accounting(dp_spends: list[LedgerEntry], policies: Sequence[SignedPolicy]) -> ReleasedValue:
    last = dp_spends[-1]
    policy = policy_in_force(policies, last.seq)
    public = True if policy is None else bool(policy.policy.get("dataset_size_public", True))
    source = (
        "no signed policy (the default)"
        if policy is None
        else (f"signed policy, ledger entry {policy.entry}")
    )
    detail = "Noise multiplier, clipping norm and delta with every reply: public configuration "
    detail += "of the run, no DP needed. "
    if public:
        sizes = sorted({e.dataset_size for e in dp_spends if e.dataset_size})
        detail += (
            "Sample rate, steps and epsilon too: the site treats its dataset size as public "
            f"({source}); the sample rate 1/ceil(n/B) reveals n = {fmt.nums(sizes)} to within "
            "one batch of B rows."
        )
    else:
        detail += (
            "Sample rate, steps and epsilon are withheld: the site keeps its dataset size "
            f"private ({source})."
        )
    return _value(
        ACCOUNTING,
        "Accounting parameters",
        "public-configuration",
        detail,
        rounds=[e.round for e in dp_spends],
        entries=[] if policy is None else [policy.entry],
    )


def released_warnings(
    node: str,
    run_id: str,
    entries: Sequence[LedgerEntry],
    policies: Sequence[SignedPolicy],
    rows: ClientRows,
    eval_rows: ClientRows,
) -> list[str]:
    """Where metrics.jsonl says something left that the signed entries do not list."""
    spends = {(e.kind, e.round): e for e in entries if e.spends and e.run_id == run_id}
    out = []
    for kind, node_rows in (("round", rows.get(node, [])), ("release", eval_rows.get(node, []))):
        for rnd, row in node_rows:
            if row.get("status") != "ok":
                continue
            out += _row_findings(node, kind, rnd, row, spends.get((kind, rnd)), policies)
    return out


def _row_findings(
    node: str,
    kind: str,
    rnd: int,
    row: dict[str, Any],
    spend: LedgerEntry | None,
    policies: Sequence[SignedPolicy],
) -> list[str]:
    what = "training" if kind == "round" else "evaluation"
    if spend is None:
        return [
            f"{node}: round {rnd}: metrics.jsonl records a {what} reply, the ledger has no "
            "signed spend for it (what it released is unaccounted)"
        ]
    out = []
    claimed = row.get("released")
    if isinstance(claimed, list) and sorted(map(str, claimed)) != sorted(spend.releases):
        out.append(
            f"{node}: round {rnd}: metrics.jsonl says the {what} reply released "
            f"{sorted(map(str, claimed))}, the signed entry {spend.seq} lists "
            f"{sorted(spend.releases)}"
        )
    if kind == "round" and TRAIN_METRICS not in spend.releases:
        extra = [k for k in TRAIN_METRIC_KEYS if row.get(k) is not None]
        if extra:
            out.append(
                f"{node}: round {rnd}: metrics.jsonl holds {', '.join(extra)}, which the "
                f"site's signed entry {spend.seq} does not list as released"
            )
    policy = policy_in_force(policies, spend.seq)
    if policy is not None and policy.policy.get("dataset_size_public") is False:
        extra = [k for k in SIZE_REVEALING_KEYS if row.get(k) is not None]
        if extra:
            out.append(
                f"{node}: round {rnd}: metrics.jsonl holds {', '.join(extra)} although the "
                f"site's signed policy (entry {policy.entry}) keeps its dataset size private"
            )
    return out
